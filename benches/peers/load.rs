//! The control-plane load driver: `concurrency` workers issue one RPC after another for a fixed
//! time, all multiplexed on one HTTP/2 connection (one tonic `Channel`), which is what ghz -c N
//! does by default and what every gRPC client channel does. Any failed call fails the run: a
//! rate that includes errors would flatter the server.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context;
use tonic::transport::{Channel, Endpoint};

/// What one measurement saw.
#[derive(Debug)]
pub struct Load {
    /// Completed calls.
    pub calls: usize,
    /// Completed calls per second.
    pub rps: f64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th-percentile latency, milliseconds.
    pub p99_ms: f64,
}

/// One new HTTP/2 connection to `addr`; clones of the channel share it.
pub async fn connect(addr: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {addr}"))
}

/// Runs `call` from `concurrency` workers for `duration`; `call` gets a running number, unique
/// across workers.
pub async fn drive<F, Fut>(concurrency: usize, duration: Duration, call: F) -> anyhow::Result<Load>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (call, counter) = (call.clone(), counter.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let sent = Instant::now();
                call(n).await?;
                latencies.push(sent.elapsed());
            }
            Ok::<_, tonic::Status>(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(worker) = workers.join_next().await {
        latencies.extend(worker?.context("a call failed")?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let percentile = |p: f64| {
        let index = ((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1);
        latencies.get(index).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    Ok(Load {
        calls: latencies.len(),
        rps: latencies.len() as f64 / elapsed,
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
    })
}
