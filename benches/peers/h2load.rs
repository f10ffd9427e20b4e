//! The control plane driven by h2load (nghttp2's HTTP/2 load generator) as well as by our own
//! driver: one connection, `-m` concurrent streams, unary gRPC calls whose request is a file of
//! pre-encoded bytes. h2load never decodes a response, so on these two cores, which the driver
//! shares with the server, it measures the server with the least driver work beside it; our
//! driver decodes every response as ghz and real clients do. The two views differ most where
//! responses are large (a DownloadOperation is several times a HelloReply).
//!
//! h2load sees HTTP statuses, not gRPC ones (a failed call is still HTTP 200), so each run is
//! checked by its bytes: the calls must have received, together, exactly as many message bytes
//! as the expected answer times the calls, so a call answered with an error (trailers only, no
//! message) fails the run. (h2load does not show the bytes, so an answer of another content
//! but the same length would pass.)

use std::path::Path;

use anyhow::{Context, bail};
use prost::Message;
use tokio::process::Command;

use crate::load::Load;

/// A gRPC method and the request and answer of each call, in their gRPC frames.
pub struct Call<'a> {
    /// The method's path, `/package.Service/Method`.
    pub path: &'a str,
    /// The request every call sends.
    pub request: Vec<u8>,
    /// The answer every call must receive.
    pub response: Vec<u8>,
}

/// `message` in its gRPC frame: a zero (uncompressed) byte, the length, the message.
pub fn framed(message: &impl Message) -> Vec<u8> {
    let message = message.encode_to_vec();
    let len = u32::try_from(message.len()).expect("a benchmark message is far below 4 GiB");
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(&message);
    framed
}

/// Runs `calls` calls of `call` on `addr` with h2load, `concurrency` streams on one connection,
/// writing the request file into `dir`. Fails unless every call got exactly the expected
/// response. (A count, not a duration: a timed run stops with calls in flight whose bytes
/// arrive but are not counted, and the byte check must be exact.) h2load reports no latency
/// percentiles: the load's p50 and p99 are NaN, and the control workload records neither.
pub async fn drive(
    addr: &str,
    call: &Call<'_>,
    concurrency: usize,
    calls: usize,
    dir: &Path,
) -> anyhow::Result<Load> {
    let body = dir.join(format!(
        "{}.grpc",
        call.path.rsplit('/').next().unwrap_or("request")
    ));
    std::fs::write(&body, &call.request)
        .with_context(|| format!("cannot write {}", body.display()))?;
    let output = Command::new("h2load")
        .arg(format!("--requests={calls}"))
        .args([
            "--clients=1",
            &format!("--max-concurrent-streams={concurrency}"),
        ])
        .arg(format!("--data={}", body.display()))
        .args([
            "--header=content-type: application/grpc",
            "--header=te: trailers",
        ])
        .arg(format!("http://{addr}{}", call.path))
        .output()
        .await
        .context("cannot run h2load")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("h2load failed ({}): {text}", output.status);
    }
    let run = parse(&text).with_context(|| format!("unexpected h2load output:\n{text}"))?;
    if run.calls != calls {
        bail!("h2load completed {} of {calls} calls:\n{text}", run.calls);
    }
    let expected = call.response.len() * run.calls;
    let received = data_bytes(&text).context("no data bytes in h2load's output")?;
    if received != expected {
        bail!(
            "{}: {} calls received {received} bytes of messages, not {expected}: some calls \
             failed or got another answer",
            call.path,
            run.calls
        );
    }
    Ok(run)
}

/// The completed calls and the rate from h2load's summary.
fn parse(text: &str) -> Option<Load> {
    let rps = text
        .lines()
        .find_map(|line| line.strip_prefix("finished in "))?
        .split(", ")
        .nth(1)?
        .strip_suffix(" req/s")?
        .parse()
        .ok()?;
    let requests = text
        .lines()
        .find_map(|line| line.strip_prefix("requests: "))?;
    let field = |name: &str| -> Option<usize> {
        requests
            .split(", ")
            .find_map(|part| part.strip_suffix(name))?
            .trim()
            .parse()
            .ok()
    };
    let (done, succeeded) = (field(" done")?, field(" succeeded")?);
    if done == 0 || succeeded != done {
        return None;
    }
    Some(Load {
        calls: done,
        rps,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
    })
}

/// The bytes of DATA frames h2load received: `traffic: ... , 700.13KB (716933) data`.
fn data_bytes(text: &str) -> Option<usize> {
    let traffic = text
        .lines()
        .find_map(|line| line.strip_prefix("traffic: "))?;
    let data = traffic.split(", ").find(|part| part.ends_with(" data"))?;
    data.split_once('(')?.1.split_once(')')?.0.parse().ok()
}
