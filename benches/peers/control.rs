//! The control plane: transferd's unary RPCs under ghz-style load (many concurrent calls on one
//! connection) against the plain tonic hello server, interleaved: SayHello, GetDownload,
//! SayHello, ListDownloads, SayHello, CreateDownload in each round, on a fresh transferd whose
//! store was seeded with `control_seed` finished downloads. Each measurement starts once every
//! server is idle: the downloads a create measurement started never share the cores with the
//! next measurement.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use transferd::client::Client;
use transferd::pb::backgroundtransfer::v1 as pb;

use crate::h2load;
use crate::load::{self, Load};
use crate::report::Report;
use crate::server::Server;
use crate::workloads::{Context, done, request, sync_all};

const W: &str = "control";

/// Creates in flight while seeding the store.
const SEED_PARALLEL: usize = 16;

/// Page size of the ListDownloads measurement, as in the README's ghz recipe.
const LIST_PAGE_SIZE: u32 = 10;

/// How long the seeded downloads, or those a create measurement started, get to finish.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How often seeding polls the server while waiting for the downloads to finish.
const SETTLE_POLL: Duration = Duration::from_millis(20);

/// The RPCs measured, in the order they run. The two read RPCs run once with our driver and
/// once with h2load (see `h2load.rs`), each against hello driven the same way. "CreateDownload"
/// starts real downloads of a small file, which share the cores with the creates;
/// "CreateDownload, held" runs last, with the network reported down, so its downloads wait and
/// it measures the durable create itself.
const RPCS: [&str; 6] = [
    "GetDownload",
    "ListDownloads(10)",
    GET_H2LOAD,
    LIST_H2LOAD,
    "CreateDownload",
    HELD_CREATES,
];

/// The read RPCs driven by h2load, and the hello they are compared with.
const GET_H2LOAD: &str = "GetDownload (h2load)";
const LIST_H2LOAD: &str = "ListDownloads(10) (h2load)";
const HELLO_H2LOAD: &str = "SayHello (h2load)";

/// Whether `rpc` is driven by h2load.
fn by_h2load(rpc: &str) -> bool {
    rpc.ends_with("(h2load)")
}

/// The hello measurement `rpc` is compared with.
fn hello_for(rpc: &str) -> &'static str {
    if by_h2load(rpc) {
        HELLO_H2LOAD
    } else {
        "SayHello"
    }
}

/// The create measurement whose downloads wait (PAUSED_NO_NETWORK) instead of running.
const HELD_CREATES: &str = "CreateDownload, held";

/// Runs the control-plane rounds and adds their rows to `report`.
pub async fn control(ctx: &Context, report: &mut Report) -> anyhow::Result<()> {
    let hello = Server::hello().await?;
    let mut pairing = 0;
    for keep in ctx.rounds() {
        let dir = ctx.fresh("control-transferd")?;
        let server = Server::transferd(&dir, &[]).await?;
        let guid = seed(ctx, &server.client().await?).await?;
        // The `--baseline` build, seeded the same way, measured right after this build.
        let baseline = match &ctx.baseline {
            Some(bin) => {
                let dir = ctx.fresh("control-baseline")?;
                let server = Server::transferd_from(bin, &dir, &[]).await?;
                let guid = seed(ctx, &server.client().await?).await?;
                Some((dir, server, guid))
            }
            None => None,
        };
        let mut clients = vec![server.client().await?];
        if let Some((_, server, _)) = &baseline {
            clients.push(server.client().await?);
        }
        for rpc in RPCS {
            settle_all(&clients).await?;
            sync_all().await?;
            let peer = if by_h2load(rpc) {
                costed(&hello, drive_hello_h2load(ctx, &hello.addr, &dir)).await?
            } else {
                costed(&hello, drive_hello(ctx, &hello.addr)).await?
            };
            if keep {
                record(report, hello_for(rpc), &peer);
            }
            // This build and the baseline take turns at running right after hello, as in the
            // download workloads (see `Context::builds`).
            for bin in ctx.builds(&mut pairing) {
                let (server, guid, row) = match (bin, &baseline) {
                    (Some(_), Some((_, server, guid))) => {
                        (server, guid, format!("{rpc} {BASELINE}"))
                    }
                    _ => (&server, &guid, rpc.to_string()),
                };
                // Neither server's downloads (the creates start real ones) run meanwhile.
                settle_all(&clients).await?;
                sync_all().await?;
                let load = if by_h2load(rpc) {
                    let client = server.client().await?;
                    costed(
                        server,
                        drive_h2load(ctx, &client, &server.addr, rpc, guid, &dir),
                    )
                    .await?
                } else {
                    costed(server, drive_transferd(ctx, &server.addr, rpc, guid)).await?
                };
                if keep {
                    record(report, &row, &load);
                }
            }
        }
        server.stop().await?;
        done(dir).await?;
        if let Some((dir, server, _)) = baseline {
            server.stop().await?;
            done(dir).await?;
        }
    }
    for rpc in RPCS {
        // h2load reports no percentiles, and its CPU is not the bench process's.
        let measures: &[&str] = if by_h2load(rpc) {
            &["RPS", SERVER_CPU]
        } else {
            &["RPS", "p50", "p99", SERVER_CPU, DRIVER_CPU]
        };
        for measure in measures {
            report.compare(
                W,
                &format!("{rpc} {measure}"),
                &format!("{} {measure}", hello_for(rpc)),
            );
        }
        if ctx.baseline.is_some() {
            report.compare(W, &format!("{rpc} RPS"), &format!("{rpc} {BASELINE} RPS"));
        }
    }
    Ok(())
}

/// Marks the rows of the `--baseline` build.
const BASELINE: &str = "(baseline)";

/// The rows of the server's and the load driver's CPU per call.
const SERVER_CPU: &str = "server CPU/call";
const DRIVER_CPU: &str = "driver CPU/call";

/// A measurement and what it cost: CPU microseconds per call in the server and in this process
/// (the load driver, which shares the cores). Unlike the rate, which also moves with latency
/// and with what else the machine runs, these say where a difference in rate comes from.
struct Costed {
    load: Load,
    server_us: f64,
    driver_us: f64,
}

/// Runs `measurement` against `server` and adds what it cost.
async fn costed(
    server: &Server,
    measurement: impl Future<Output = anyhow::Result<Load>>,
) -> anyhow::Result<Costed> {
    let driver = || crate::proc::cpu_seconds(std::process::id());
    let (server_before, driver_before) = (server.cpu_seconds()?, driver()?);
    let load = measurement.await?;
    let calls = load.calls.max(1) as f64;
    Ok(Costed {
        server_us: (server.cpu_seconds()? - server_before) * 1e6 / calls,
        driver_us: (driver()? - driver_before) * 1e6 / calls,
        load,
    })
}

fn record(report: &mut Report, rpc: &str, costed: &Costed) {
    let load = &costed.load;
    report.record(W, &format!("{rpc} RPS"), "RPS", load.rps);
    report.record(W, &format!("{rpc} {SERVER_CPU}"), "µs", costed.server_us);
    if by_h2load(rpc) {
        return;
    }
    report.record(W, &format!("{rpc} p50"), "ms", load.p50_ms);
    report.record(W, &format!("{rpc} p99"), "ms", load.p99_ms);
    report.record(W, &format!("{rpc} {DRIVER_CPU}"), "µs", costed.driver_us);
}

/// SayHello driven by h2load.
async fn drive_hello_h2load(ctx: &Context, addr: &str, dir: &Path) -> anyhow::Result<Load> {
    let call = h2load::Call {
        path: crate::hello::SAY_HELLO,
        request: h2load::framed(&crate::hello::request()),
        response: h2load::framed(&crate::hello::reply()),
    };
    let sizes = &ctx.sizes;
    h2load::drive(
        addr,
        &call,
        sizes.control_concurrency,
        sizes.h2load_calls,
        dir,
    )
    .await
}

/// `rpc` (GetDownload or ListDownloads(10)) driven by h2load; the answer every call must get
/// is read first with `client`.
async fn drive_h2load(
    ctx: &Context,
    client: &Client,
    addr: &str,
    rpc: &str,
    guid: &str,
    dir: &Path,
) -> anyhow::Result<Load> {
    let call = if rpc == GET_H2LOAD {
        h2load::Call {
            path: GET_DOWNLOAD,
            request: h2load::framed(&pb::GetDownloadRequest { guid: guid.into() }),
            response: h2load::framed(&client.get(guid).await?),
        }
    } else {
        h2load::Call {
            path: LIST_DOWNLOADS,
            request: h2load::framed(&pb::ListDownloadsRequest {
                page_size: LIST_PAGE_SIZE,
                ..Default::default()
            }),
            response: h2load::framed(&client.list(None, LIST_PAGE_SIZE, "").await?),
        }
    };
    let sizes = &ctx.sizes;
    h2load::drive(
        addr,
        &call,
        sizes.control_concurrency,
        sizes.h2load_calls,
        dir,
    )
    .await
}

/// The paths of the two read RPCs.
const GET_DOWNLOAD: &str = "/backgroundtransfer.v1.BackgroundTransferService/GetDownload";
const LIST_DOWNLOADS: &str = "/backgroundtransfer.v1.BackgroundTransferService/ListDownloads";

/// SayHello on a new connection.
async fn drive_hello(ctx: &Context, addr: &str) -> anyhow::Result<Load> {
    let channel = load::connect(addr).await?;
    load::drive(
        ctx.sizes.control_concurrency,
        ctx.sizes.control_duration,
        move |_| crate::hello::say_hello(channel.clone()),
    )
    .await
}

/// `rpc` against transferd on a new connection; creates name their result files after the
/// call's number, so none collide. Held creates first report the network down.
async fn drive_transferd(ctx: &Context, addr: &str, rpc: &str, guid: &str) -> anyhow::Result<Load> {
    let client = Client::from_channel(load::connect(addr).await?);
    let (concurrency, duration) = (ctx.sizes.control_concurrency, ctx.sizes.control_duration);
    let guid = guid.to_string();
    let url = ctx.origin.small_url(0);
    // Result files of the two create measurements must not collide.
    let prefix = if rpc == HELD_CREATES { "h" } else { "c" };
    match rpc {
        "GetDownload" => {
            load::drive(concurrency, duration, move |_| {
                let (client, guid) = (client.clone(), guid.clone());
                async move { client.get(&guid).await.map(drop) }
            })
            .await
        }
        "ListDownloads(10)" => {
            load::drive(concurrency, duration, move |_| {
                let client = client.clone();
                async move { client.list(None, LIST_PAGE_SIZE, "").await.map(drop) }
            })
            .await
        }
        _ => {
            if rpc == HELD_CREATES {
                client.set_network_conditions(Some(false), None).await?;
            }
            load::drive(concurrency, duration, move |n| {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    client
                        .create(request(&url, &format!("{prefix}{n}.bin")))
                        .await
                        .map(drop)
                }
            })
            .await
        }
    }
}

/// Stores `control_seed` downloads of a small file and waits until all have finished, as on a
/// server that has been in use; returns the guid of one of them.
async fn seed(ctx: &Context, client: &Client) -> anyhow::Result<String> {
    let url = ctx.origin.small_url(0);
    let mut first = None;
    let mut running = tokio::task::JoinSet::<Result<pb::DownloadOperation, tonic::Status>>::new();
    for i in 0..ctx.sizes.control_seed {
        if running.len() == SEED_PARALLEL {
            let created = running.join_next().await.context("a create task")???;
            first.get_or_insert(created.guid);
        }
        let (client, request) = (client.clone(), request(&url, &format!("s{i}.bin")));
        running.spawn(async move { client.create(request).await });
    }
    while let Some(created) = running.join_next().await {
        first.get_or_insert(created??.guid);
    }
    settle(client).await?;
    Ok(first.unwrap_or_default())
}

/// Waits until no server of `clients` runs a download or has one queued, so that what one
/// measurement started (the downloads of the running creates) does not share the cores with
/// the next.
async fn settle_all(clients: &[Client]) -> anyhow::Result<()> {
    for client in clients {
        settle(client).await?;
    }
    Ok(())
}

/// Waits until `client`'s server runs no download and has none queued.
async fn settle(client: &Client) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let status = client.system_status().await?;
        if status.active_downloads == 0 && status.queued_downloads == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the downloads did not finish within {SETTLE_TIMEOUT:?}");
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}
