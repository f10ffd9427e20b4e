//! Load driver (not a test): CreateDownload and GetDownload throughput of transferd on SQLite,
//! on PostgreSQL with one replica, and on PostgreSQL with `--replicas` (default 3) replicas
//! sharing one database and one download directory, side by side in one run.
//!
//! Every configuration starts the real `transferd` binary (one process per replica, each with
//! its own `--data-dir` and `--node-id`) on a fresh directory and, for PostgreSQL, a fresh
//! database on the server `--postgres` names (else the private instance `.ci/postgres url`
//! starts). Each replica is told the network is down (SetNetworkConditions) before any call, so
//! it claims and runs nothing and only the control plane is measured. Then, for `--seconds`
//! each, `--concurrency` (default 50) calls stay in flight, as `ghz -c 50` sends them:
//! - durable CreateDownload (acknowledged once committed);
//! - GetDownload, cycling over the downloads those creates stored.
//!
//! With several replicas the calls go round-robin over one connection per replica, the same
//! number in flight in total. Rounds alternate the configurations (SQLite, PostgreSQL ×1,
//! PostgreSQL ×N, then again), after one warm-up round whose samples are dropped. It reports
//! the median over rounds of calls per second, p99 latency, and CPU time per call of the
//! transferd processes and of the PostgreSQL backends serving the configuration's database
//! (from /proc; other load on the machine moves these far less than it moves the rate), each
//! with its ratio to SQLite's figure in the same run. Every sample goes to
//! `DIR/run-<unix time>/replicas.json`, with each replica's log beside it.
//!
//! Build the server first, then run, for example:
//! `cargo build --release && cargo run --release --example replicas`

// This driver starts no origin and reads no RSS: the rest of the shared module is unused here.
#[allow(dead_code)]
mod support;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::Serialize;
use support::{cpu_seconds, start_server};
use tokio::process::Child;
use tokio_postgres::NoTls;
use transferd::client::Client;
use transferd::pb::backgroundtransfer::v1 as pb;

/// Rounds run before the measured ones, their samples dropped: the first processes and
/// databases of a run pay for cold caches (binary pages, PostgreSQL's catalog) the rest do not.
const WARMUP_ROUNDS: usize = 1;

/// The origin the downloads name. Nothing fetches it (every replica reports the network down),
/// so it need not exist; a documentation address makes that plain.
const URL: &str = "http://192.0.2.1/file";

/// How long the driver waits for PostgreSQL to answer the CPU-time query or create or drop a
/// database before failing the run rather than hanging it.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The workloads, in the order each configuration runs them: the creates store the downloads
/// the gets read.
const WORKLOADS: [&str; 2] = ["CreateDownload", "GetDownload"];

/// What one run measures.
#[derive(clap::Parser, Serialize)]
#[command(about = "CreateDownload and GetDownload on SQLite and on PostgreSQL replicas")]
struct Args {
    /// The transferd binary to run.
    #[arg(long, default_value = "target/release/transferd")]
    bin: PathBuf,
    /// Where each run gets a new directory, `run-<unix time>`.
    #[arg(long, default_value = "target/replicas")]
    dir: PathBuf,
    /// A PostgreSQL URL whose user may create databases [default: `.ci/postgres url`].
    #[arg(long, env = "TRANSFERD_TEST_POSTGRES", hide_env_values = true)]
    postgres: Option<String>,
    /// Replicas in the largest configuration.
    #[arg(long, default_value = "3")]
    replicas: usize,
    /// Measured rounds (after one warm-up round).
    #[arg(long, default_value = "3")]
    rounds: usize,
    /// Seconds each workload runs in each configuration and round: long enough that the
    /// first tenth of a second (connections, pools filling) hardly counts.
    #[arg(long, default_value = "5")]
    seconds: u64,
    /// Calls in flight, in total over the replicas' connections (as ghz -c 50).
    #[arg(long, default_value = "50")]
    concurrency: usize,
}

impl Args {
    /// The command line, checked.
    fn read() -> anyhow::Result<Args> {
        let args = <Args as clap::Parser>::parse();
        if args.replicas < 2 || args.rounds == 0 || args.seconds == 0 || args.concurrency == 0 {
            bail!("--replicas must be at least 2; --rounds, --seconds, --concurrency at least 1");
        }
        Ok(args)
    }
}

/// One way of deploying transferd.
#[derive(Clone, Copy)]
enum Config {
    /// One transferd on its embedded SQLite store.
    Sqlite,
    /// `replicas` transferd processes sharing one PostgreSQL database and download directory.
    Postgres { replicas: usize },
}

impl Config {
    /// The configuration's name in the table and the JSON.
    fn label(self) -> String {
        match self {
            Config::Sqlite => "SQLite, 1 transferd".into(),
            Config::Postgres { replicas: 1 } => "PostgreSQL, 1 replica".into(),
            Config::Postgres { replicas } => format!("PostgreSQL, {replicas} replicas"),
        }
    }

    /// A short name for directories.
    fn slug(self) -> String {
        match self {
            Config::Sqlite => "sqlite".into(),
            Config::Postgres { replicas } => format!("postgres-{replicas}"),
        }
    }
}

/// One workload measured once in one configuration.
#[derive(Serialize, Clone)]
struct Sample {
    config: String,
    workload: &'static str,
    round: usize,
    calls: usize,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU time of the transferd processes per call, microseconds.
    transferd_cpu_us: f64,
    /// CPU time of the PostgreSQL backends of the configuration's database per call,
    /// microseconds (`None` on SQLite).
    postgres_cpu_us: Option<f64>,
}

/// Everything a run wrote to `replicas.json`.
#[derive(Serialize)]
struct Output<'a> {
    unix_time: u64,
    args: &'a Args,
    warmup_rounds: usize,
    samples: &'a [Sample],
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::read()?;
    let unix_time = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    std::fs::create_dir_all(&args.dir)?;
    let run_dir = args.dir.join(format!("run-{unix_time}"));
    std::fs::create_dir(&run_dir)
        .with_context(|| format!("{} exists: one run per second", run_dir.display()))?;
    let admin = Admin::connect(&admin_url(&args)?).await?;
    let configs = [
        Config::Sqlite,
        Config::Postgres { replicas: 1 },
        Config::Postgres {
            replicas: args.replicas,
        },
    ];
    let mut samples = Vec::new();
    for round in 0..WARMUP_ROUNDS + args.rounds {
        for config in configs {
            let dir = run_dir.join(format!("round{round}-{}", config.slug()));
            let measured = run_config(&args, &admin, config, &dir, round).await?;
            let phase = if round < WARMUP_ROUNDS {
                " (warm-up)"
            } else {
                ""
            };
            for s in &measured {
                eprintln!(
                    "round {round}{phase}: {} {}: {:.0} calls/s, p99 {:.1} ms",
                    s.config, s.workload, s.rps, s.p99_ms
                );
            }
            if round >= WARMUP_ROUNDS {
                samples.extend(measured);
            }
        }
    }
    let output = Output {
        unix_time,
        args: &args,
        warmup_rounds: WARMUP_ROUNDS,
        samples: &samples,
    };
    let json = run_dir.join("replicas.json");
    std::fs::write(&json, serde_json::to_string_pretty(&output)?)?;
    print_table(&configs, &samples);
    eprintln!("samples and logs: {}", run_dir.display());
    Ok(())
}

/// Starts `config` on `dir` (and a new database), runs both workloads and stops it. The
/// database is dropped even if the run failed, so the PostgreSQL server is left as found.
async fn run_config(
    args: &Args,
    admin: &Admin,
    config: Config,
    dir: &Path,
    round: usize,
) -> anyhow::Result<Vec<Sample>> {
    let database = match config {
        Config::Sqlite => None,
        Config::Postgres { .. } => Some(admin.create_database().await?),
    };
    let store = database.as_ref().map(|name| admin.url_of(name));
    let measured = async {
        let replicas = Replicas::start(args, config, dir, store.as_deref()).await?;
        let samples = measure(args, admin, &replicas, config, database.as_deref(), round).await?;
        replicas.stop().await?;
        Ok(samples)
    }
    .await;
    if let Some(name) = database {
        admin.drop_database(&name).await?;
    }
    measured
}

/// Runs the creates, then the gets of what they created, on running `replicas`.
async fn measure(
    args: &Args,
    admin: &Admin,
    replicas: &Replicas,
    config: Config,
    database: Option<&str>,
    round: usize,
) -> anyhow::Result<Vec<Sample>> {
    let duration = Duration::from_secs(args.seconds);
    let mut samples = Vec::new();
    let mut guids = Vec::new();
    for workload in WORKLOADS {
        let before = replicas.cpu(admin, database).await?;
        let stats = if workload == "CreateDownload" {
            let (stats, created) =
                drive(&replicas.clients, args.concurrency, duration, create).await?;
            guids = created;
            stats
        } else {
            if guids.is_empty() {
                bail!("{}: no download was created to get", config.label());
            }
            let guids: Arc<[String]> = std::mem::take(&mut guids).into();
            let get = move |client: Client, n: u64| {
                let guid = guids[n as usize % guids.len()].clone();
                async move { client.get(&guid).await.map(drop) }
            };
            let (stats, _) = drive(&replicas.clients, args.concurrency, duration, get).await?;
            stats
        };
        let after = replicas.cpu(admin, database).await?;
        let cpu = before.per_call(&after, stats.calls);
        samples.push(stats.sample(config, workload, round, cpu));
    }
    Ok(samples)
}

/// A durable CreateDownload numbered `n`, which names its result file, so none collide; the
/// guid it was given.
async fn create(client: Client, n: u64) -> Result<String, tonic::Status> {
    let request = pb::CreateDownloadRequest {
        requested_uri: URL.into(),
        result_file: format!("d{n}"),
        ..Default::default()
    };
    Ok(client.create(request).await?.guid)
}

/// The running transferd processes of one configuration and one client connection to each.
struct Replicas {
    children: Vec<Child>,
    pids: Vec<u32>,
    clients: Vec<Client>,
}

impl Replicas {
    /// Starts `config`'s processes on `dir` (each replica in `dir/replica-N`, all writing under
    /// `dir/downloads`), on the PostgreSQL database `store` if given, and reports the network
    /// down to each, so none claims a download.
    async fn start(
        args: &Args,
        config: Config,
        dir: &Path,
        store: Option<&str>,
    ) -> anyhow::Result<Replicas> {
        let count = match config {
            Config::Sqlite => 1,
            Config::Postgres { replicas } => replicas,
        };
        let downloads = dir.join("downloads");
        std::fs::create_dir_all(&downloads)?;
        let downloads = downloads.to_str().context("a UTF-8 run directory")?;
        let mut replicas = Replicas {
            children: Vec::new(),
            pids: Vec::new(),
            clients: Vec::new(),
        };
        for i in 0..count {
            let replica_dir = dir.join(format!("replica-{i}"));
            std::fs::create_dir_all(&replica_dir)?;
            let node_id = format!("bench-{i}");
            let mut flags = vec!["--download-dir", downloads, "--node-id", &node_id];
            if let Some(url) = store {
                flags.extend(["--store", url]);
            }
            let (child, addr) = start_server(&args.bin, &replica_dir, &flags).await?;
            replicas.pids.push(child.id().context("server pid")?);
            replicas.children.push(child);
            let client = Client::connect(&addr).await?;
            client.set_network_conditions(Some(false), None).await?;
            replicas.clients.push(client);
        }
        Ok(replicas)
    }

    /// CPU time used so far by these processes and by the backends of `database`.
    async fn cpu(&self, admin: &Admin, database: Option<&str>) -> anyhow::Result<Cpu> {
        let mut transferd = 0.0;
        for &pid in &self.pids {
            transferd += cpu_seconds(pid)?;
        }
        let backends = match database {
            Some(name) => Some(admin.backend_cpu(name).await?),
            None => None,
        };
        Ok(Cpu {
            transferd,
            backends,
        })
    }

    /// Kills every process (nothing runs, so nothing is lost) and waits for them to exit.
    async fn stop(mut self) -> anyhow::Result<()> {
        for child in &mut self.children {
            child.kill().await?;
        }
        Ok(())
    }
}

/// CPU time at one instant, in seconds.
struct Cpu {
    transferd: f64,
    /// By backend pid: a backend that starts later counts from zero.
    backends: Option<HashMap<i32, f64>>,
}

impl Cpu {
    /// Microseconds of CPU per call between `self` and `after`: transferd's, PostgreSQL's.
    fn per_call(&self, after: &Cpu, calls: usize) -> (f64, Option<f64>) {
        let per_call = |seconds: f64| seconds * 1e6 / calls.max(1) as f64;
        let postgres = after.backends.as_ref().map(|after_backends| {
            let before = self.backends.as_ref();
            let used = after_backends
                .iter()
                .map(|(pid, secs)| secs - before.and_then(|b| b.get(pid)).unwrap_or(&0.0))
                .sum();
            per_call(used)
        });
        (per_call(after.transferd - self.transferd), postgres)
    }
}

/// A connection to the PostgreSQL server's `postgres` database: creates and drops the run's
/// databases and finds the backends serving them.
struct Admin {
    url: url::Url,
    client: tokio_postgres::Client,
}

impl Admin {
    /// Connects to `url`.
    async fn connect(url: &str) -> anyhow::Result<Admin> {
        let parsed = url::Url::parse(url).context("--postgres is not a URL")?;
        let (client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .with_context(|| format!("cannot connect to PostgreSQL at {parsed}"))?;
        tokio::spawn(connection);
        Ok(Admin {
            url: parsed,
            client,
        })
    }

    /// Creates a new, empty database and returns its name.
    async fn create_database(&self) -> anyhow::Result<String> {
        let name = format!("bench_replicas_{}", uuid::Uuid::new_v4().simple());
        let sql = format!("CREATE DATABASE {name}");
        tokio::time::timeout(ADMIN_TIMEOUT, self.client.batch_execute(&sql)).await??;
        Ok(name)
    }

    /// Drops a database this driver created, closing whatever connections are left to it.
    async fn drop_database(&self, name: &str) -> anyhow::Result<()> {
        let sql = format!("DROP DATABASE {name} WITH (FORCE)");
        tokio::time::timeout(ADMIN_TIMEOUT, self.client.batch_execute(&sql)).await??;
        Ok(())
    }

    /// The URL of database `name` on the same server.
    fn url_of(&self, name: &str) -> String {
        let mut url = self.url.clone();
        url.set_path(name);
        url.to_string()
    }

    /// CPU seconds used so far by each backend connected to database `name`. Shared processes
    /// (WAL writer, checkpointer) serve every database on the server, so they are left out.
    async fn backend_cpu(&self, name: &str) -> anyhow::Result<HashMap<i32, f64>> {
        let query = "SELECT pid FROM pg_stat_activity WHERE datname = $1";
        let rows =
            tokio::time::timeout(ADMIN_TIMEOUT, self.client.query(query, &[&name])).await??;
        let mut cpu = HashMap::new();
        for row in rows {
            let pid: i32 = row.get(0);
            // A backend that exited since the query has nothing more to add.
            if let Ok(seconds) = cpu_seconds(pid as u32) {
                cpu.insert(pid, seconds);
            }
        }
        Ok(cpu)
    }
}

/// `--postgres`, or the URL of the private instance `.ci/postgres url` starts (or finds running).
fn admin_url(args: &Args) -> anyhow::Result<String> {
    if let Some(url) = &args.postgres {
        return Ok(url.clone());
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/postgres");
    let out = std::process::Command::new("bash")
        .args([script, "url"])
        .output()
        .context("cannot run .ci/postgres")?;
    if !out.status.success() {
        bail!(
            "no PostgreSQL: {}; pass --postgres URL",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// What one workload saw.
struct Stats {
    calls: usize,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Stats {
    /// The sample of `workload` in `config`, with its CPU time per call.
    fn sample(
        &self,
        config: Config,
        workload: &'static str,
        round: usize,
        (transferd_cpu_us, postgres_cpu_us): (f64, Option<f64>),
    ) -> Sample {
        Sample {
            config: config.label(),
            workload,
            round,
            calls: self.calls,
            rps: self.rps,
            p50_ms: self.p50_ms,
            p99_ms: self.p99_ms,
            transferd_cpu_us,
            postgres_cpu_us,
        }
    }
}

/// Runs `call` from `concurrency` workers for `duration` and returns what the calls returned. Call `n` (a running number, unique
/// across workers) goes to `clients[n % clients.len()]`: round-robin over the replicas'
/// connections. Any failed call fails the run: a rate that counts errors would flatter it.
async fn drive<F, Fut, T>(
    clients: &[Client],
    concurrency: usize,
    duration: Duration,
    call: F,
) -> anyhow::Result<(Stats, Vec<T>)>
where
    F: Fn(Client, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<T, tonic::Status>> + Send,
    T: Send + 'static,
{
    let clients: Arc<[Client]> = clients.into();
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (call, counter, clients) = (call.clone(), counter.clone(), clients.clone());
        workers.spawn(async move {
            let (mut latencies, mut outputs) = (Vec::new(), Vec::new());
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let client = clients[n as usize % clients.len()].clone();
                let sent = Instant::now();
                outputs.push(call(client, n).await?);
                latencies.push(sent.elapsed());
            }
            Ok::<_, tonic::Status>((latencies, outputs))
        });
    }
    let (mut latencies, mut outputs) = (Vec::new(), Vec::new());
    while let Some(worker) = workers.join_next().await {
        let (worker_latencies, worker_outputs) = worker?.context("a call failed")?;
        latencies.extend(worker_latencies);
        outputs.extend(worker_outputs);
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let percentile = |p: f64| {
        let index = ((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1);
        latencies.get(index).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let stats = Stats {
        calls: latencies.len(),
        rps: latencies.len() as f64 / elapsed,
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
    };
    Ok((stats, outputs))
}

/// The median of `values` (the mean of the middle two for an even count); 0 if empty.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[mid],
        _ => (values[mid - 1] + values[mid]) / 2.0,
    }
}

/// The medians of one configuration's samples of one workload.
struct Medians {
    rps: f64,
    p99_ms: f64,
    transferd_cpu_us: f64,
    postgres_cpu_us: Option<f64>,
}

impl Medians {
    /// The medians of `workload` in the configuration labelled `config`.
    fn of(samples: &[Sample], config: &str, workload: &str) -> Medians {
        let matching: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.config == config && s.workload == workload)
            .collect();
        let of = |f: fn(&Sample) -> f64| median(matching.iter().map(|s| f(s)).collect());
        let postgres: Vec<f64> = matching.iter().filter_map(|s| s.postgres_cpu_us).collect();
        Medians {
            rps: of(|s| s.rps),
            p99_ms: of(|s| s.p99_ms),
            transferd_cpu_us: of(|s| s.transferd_cpu_us),
            postgres_cpu_us: (!postgres.is_empty()).then(|| median(postgres)),
        }
    }

    /// Server CPU per call: transferd's and, if any, PostgreSQL's backends'.
    fn server_cpu_us(&self) -> f64 {
        self.transferd_cpu_us + self.postgres_cpu_us.unwrap_or(0.0)
    }
}

/// Prints the markdown table of medians, each with its ratio to SQLite's in this run (above 1
/// is better for calls per second, below 1 for latency and CPU).
fn print_table(configs: &[Config], samples: &[Sample]) {
    println!(
        "| workload | configuration | calls/s | ratio | p99 | ratio | server CPU per call (transferd + PostgreSQL) | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for workload in WORKLOADS {
        let sqlite = Medians::of(samples, &Config::Sqlite.label(), workload);
        for config in configs {
            let label = config.label();
            let m = Medians::of(samples, &label, workload);
            let postgres = m
                .postgres_cpu_us
                .map_or(String::new(), |us| format!(" + {us:.0}"));
            println!(
                "| {workload} | {label} | {:.0} | {:.2} | {:.1} ms | {:.2} | {:.0}{postgres} µs | {:.2} |",
                m.rps,
                m.rps / sqlite.rps,
                m.p99_ms,
                m.p99_ms / sqlite.p99_ms,
                m.transferd_cpu_us,
                m.server_cpu_us() / sqlite.server_cpu_us(),
            );
        }
    }
}
