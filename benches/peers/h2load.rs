//! The control plane driven by h2load (nghttp2's HTTP/2 load generator) as well as by our own
//! driver: one connection, `-m` concurrent streams, unary gRPC calls whose request is a file of
//! pre-encoded bytes. h2load never decodes a response, so on these two cores, which the driver
//! shares with the server, it measures the server with the least driver work beside it; our
//! driver decodes every response as ghz and real clients do. The two views differ most where
//! responses are large (a DownloadOperation is several times a HelloReply).
//!
//! h2load sees HTTP statuses, not gRPC ones (a failed call is still HTTP 200), so each run is
//! checked by its bytes: every call must have received exactly the expected response message,
//! and a call answered with an error (trailers only, no message) fails the run.

use std::path::Path;

use anyhow::{Context, bail};
use prost::Message;
use tokio::process::Command;

/// One h2load measurement.
#[derive(Debug)]
pub struct Run {
    /// Completed calls.
    pub calls: usize,
    /// Completed calls per second.
    pub rps: f64,
}

/// A gRPC method and the exact request and response messages of each call.
pub struct Call<'a> {
    /// The method's path, `/package.Service/Method`.
    pub path: &'a str,
    /// The request every call sends.
    pub request: &'a dyn EncodeLen,
    /// The response every call must receive.
    pub response: &'a dyn EncodeLen,
}

/// What h2load needs of a message: its bytes, and their length on the wire.
pub trait EncodeLen {
    /// The message in its gRPC frame: a zero (uncompressed) byte, the length, the message.
    fn framed(&self) -> Vec<u8>;
}

impl<M: Message> EncodeLen for M {
    fn framed(&self) -> Vec<u8> {
        let message = self.encode_to_vec();
        let mut framed = Vec::with_capacity(5 + message.len());
        framed.push(0);
        framed.extend_from_slice(
            &u32::try_from(message.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        framed.extend_from_slice(&message);
        framed
    }
}

/// Runs `calls` calls of `call` on `addr` with h2load, `concurrency` streams on one connection,
/// writing the request file into `dir`. Fails unless every call got exactly the expected
/// response. (A count, not a duration: a timed run stops with calls in flight whose bytes
/// arrive but are not counted, and the byte check must be exact.)
pub async fn drive(
    addr: &str,
    call: &Call<'_>,
    concurrency: usize,
    calls: usize,
    dir: &Path,
) -> anyhow::Result<Run> {
    let body = dir.join(format!(
        "{}.grpc",
        call.path.rsplit('/').next().unwrap_or("request")
    ));
    std::fs::write(&body, call.request.framed())
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
    let expected = call.response.framed().len() * run.calls;
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
fn parse(text: &str) -> Option<Run> {
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
    Some(Run { calls: done, rps })
}

/// The bytes of DATA frames h2load received: `traffic: ... , 700.13KB (716933) data`.
fn data_bytes(text: &str) -> Option<usize> {
    let traffic = text
        .lines()
        .find_map(|line| line.strip_prefix("traffic: "))?;
    let data = traffic.split(", ").find(|part| part.ends_with(" data"))?;
    data.split_once('(')?.1.split_once(')')?.0.parse().ok()
}
