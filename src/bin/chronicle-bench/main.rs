//! `chronicle-bench`: the load generator behind `make bench`.
//!
//! It creates its own database and JetStream stream, starts the release
//! `chronicle serve --all` on a free 127.0.0.1 port (API, relay, projections,
//! as `make run` does), measures Postgres's own ceiling with pgbench, drives
//! the scenarios through the HTTP API, checks after each one that no event was
//! lost and no read model diverged from the event store, and writes
//! `report.json`, `report.md` and `latency.svg`. Every figure that matters is
//! a ratio or a target measured in the same run; see `docs/performance.md`.
#![forbid(unsafe_code)]

mod chat;
mod checks;
mod cpu;
mod env;
mod fake_upstream;
mod load;
mod report;
mod scenarios;
mod soak;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use checks::Integrity;
use env::{Server, World};
use fake_upstream::FakeUpstream;
use report::Row;
use scenarios::{Bench, CreatePlan, Sizes};

/// Chronicle's benchmark: scenarios, targets and ratios against pgbench.
#[derive(Debug, Parser)]
#[command(name = "chronicle-bench")]
struct Args {
    /// Short runs and a 100k-event rebuild (about 2 minutes).
    #[arg(long, env = "QUICK", value_parser = clap::builder::FalseyValueParser::new())]
    quick: bool,
    /// Where the report goes.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// The chronicle binary (default: next to this one).
    #[arg(long)]
    chronicle: Option<PathBuf>,
    /// Keep the benchmark databases and stream afterwards.
    #[arg(long)]
    keep: bool,
    /// Also run every scenario against this (older) chronicle binary first,
    /// and add a before/after table: the effect of a change, measured in one run.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Run only these scenarios (comma list of ceiling, create, history, hot,
    /// lag, read, chat, sse, rebuild); memory and integrity are always reported.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Instead of the scenarios: steady mixed load, sampled, judged on trend
    /// (report in target/soak unless --out; see docs/performance.md, "Soak").
    #[arg(long)]
    soak: bool,
    /// Soak: minutes of load.
    #[arg(long, env = "SOAK_MINUTES", default_value_t = 30.0)]
    minutes: f64,
    /// Soak: seconds between samples.
    #[arg(long, env = "SOAK_SAMPLE_SECS", default_value_t = 10.0)]
    sample_secs: f64,
    /// Soak: requests per second offered, in total (mixed).
    #[arg(long, env = "SOAK_RATE", default_value_t = 100.0)]
    rate: f64,
}

const TARGET_CREATE_RATIO: f64 = 0.3;
const TARGET_CREATE_P99_MS: f64 = 10.0;
const TARGET_HISTORY_RATIO: f64 = 1.3;
const TARGET_HOT_ERRORS: f64 = 0.01;
const TARGET_LAG_P99_MS: f64 = 20.0;
const TARGET_REBUILD_EPS: f64 = 100_000.0;
const TARGET_GET_RPS: f64 = 17_000.0;
const TARGET_LIST_RPS: f64 = 5_000.0;
const TARGET_LIST_P99_MS: f64 = 10.0;
const TARGET_VERIFY_EPS: f64 = 300_000.0;
const TARGET_RSS_MB: f64 = 100.0;
const TARGET_CHAT_ADDED_P50_MS: f64 = 0.1;
const TARGET_CHAT_ADDED_P99_MS: f64 = 1.0;
const TARGET_CHAT_THROUGHPUT_RATIO: f64 = 0.5;
const TARGET_EXCHANGE_ADDED_P99_MS: f64 = 10.0;
const TARGET_SSE_RSS_MB: f64 = 200.0;
/// Event streams held open at once by the sse scenario, over this many sessions.
const SSE_STREAMS: usize = 1000;
const SSE_SESSIONS: usize = 20;
/// Open files the bench and its server need: the streams, both ends of each
/// on this machine, plus pools and files.
const NOFILE_NEEDED: u64 = 2 * SSE_STREAMS as u64 + 512;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("chronicle-bench: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn wanted(args: &Args, scenario: &str) -> bool {
    args.only.is_empty() || args.only.iter().any(|s| s == scenario)
}

fn say(text: impl AsRef<str>) {
    eprintln!("bench: {}", text.as_ref());
}

async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let sizes = if args.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    let chronicle = match &args.chronicle {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory for the bench binary")?
            .join("chronicle"),
    };
    if args.soak {
        return soak::run(&args, chronicle).await;
    }
    std::fs::create_dir_all(&args.out)?;
    let run_id = chrono::Utc::now().format("%Y%m%d_%H%M%S").to_string();
    env::raise_open_files(NOFILE_NEEDED).await;
    let upstream = FakeUpstream::start()?;
    let mut world = World::new(chronicle, args.out.clone(), &run_id)?;
    world.upstream = Some(upstream.base_url());
    let mut machine = machine_info(&world, &args).await;

    // The baseline first, then this build: both under the same conditions.
    let baseline = match &args.baseline {
        Some(path) => {
            let mut base_world =
                World::new(path.clone(), args.out.clone(), &format!("{run_id}_base"))?;
            base_world.upstream = Some(upstream.base_url());
            say(format!("baseline {}", path.display()));
            Some(suite(&args, &base_world, sizes, &upstream).await?)
        }
        None => None,
    };
    let (rows, details, series) = suite(&args, &world, sizes, &upstream).await?;
    let rows = rows.0;

    machine["load_after"] = json!(env::read_trimmed("/proc/loadavg"));
    machine["seconds"] = json!(started.elapsed().as_secs_f64());
    let title = format!("Chronicle benchmark {run_id}");
    let mut markdown = report::markdown(&rows, &machine, &title);
    let mut json = json!({
        "run": run_id,
        "machine": machine,
        "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        "scenarios": details,
    });
    if let (Some((base_rows, base_details, _)), Some(path)) = (&baseline, &args.baseline) {
        markdown.push_str(&report::comparison(
            &base_rows.0,
            &rows,
            &path.display().to_string(),
        ));
        json["baseline"] = json!({
            "chronicle": path.display().to_string(),
            "rows": base_rows.0.iter().map(Row::to_json).collect::<Vec<_>>(),
            "scenarios": base_details,
        });
    }
    report::write(
        &args.out,
        "report.json",
        &serde_json::to_string_pretty(&json)?,
    )?;
    report::write(&args.out, "report.md", &markdown)?;
    report::write(&args.out, "latency.svg", &report::latency_svg(&series))?;
    println!("{markdown}");
    say(format!(
        "wrote {0}/report.json, {0}/report.md, {0}/latency.svg in {1:.0} s",
        args.out.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Every scenario against the `chronicle` binary of `world`, with its own
/// database and stream, which are removed afterwards (unless `--keep`).
async fn suite(
    args: &Args,
    world: &World,
    sizes: Sizes,
    upstream: &FakeUpstream,
) -> anyhow::Result<Outcome> {
    let run_id = &world.database;
    say(format!(
        "run {run_id} ({} mode, {}): database {}, stream {}",
        if args.quick { "quick" } else { "full" },
        world.chronicle.display(),
        world.database,
        world.stream
    ));
    env::create_database(world, &world.database).await?;
    let pool = env::pool(&world.database_url).await?;
    let nats = async_nats::connect(&world.nats_url)
        .await
        .context("connecting to NATS")?;
    let jetstream = async_nats::jetstream::new(nats);
    let server = Server::start(world).await?;
    say(format!("server pid {} on {}", server.pid, server.addr));

    let result = scenarios_with_server(
        args,
        world,
        &server,
        pool.clone(),
        &jetstream,
        sizes,
        upstream,
    )
    .await;
    let mut rss_peak_mb = server.rss.peak_mib() * 1.048_576;
    let rss_end_mb = server.rss.current_mib() * 1.048_576;
    server.stop().await.ok();
    let (mut rows, mut details, series) = result?;
    // The sse scenario has its own memory target: the run's peak is taken before it.
    let before_sse = details
        .get("sse")
        .and_then(|sse| sse["peak_rss_before_mb"].as_f64());
    if let Some(peak) = before_sse {
        rss_peak_mb = peak;
    }

    if wanted(args, "rebuild") {
        say(format!("rebuild: {} events", sizes.rebuild_events));
        match scenarios::rebuild(
            world,
            sizes.rebuild_events,
            sizes.rebuild_timeout,
            args.keep,
        )
        .await
        {
            Ok(run) => {
                let eps = run.events as f64 / run.replay_seconds.max(1e-9);
                rows.push(Row::target(
                    "rebuild",
                    &format!("`replay --projection all` over {} events", run.events),
                    format!("{eps:.0} events/s ({:.1} s)", run.replay_seconds),
                    "≥ 100000 events/s",
                    eps >= TARGET_REBUILD_EPS,
                ));
                // Side by side, one per core: their times overlap.
                for (name, count, seconds) in run.projections.iter().filter(|p| p.1 > 0) {
                    rows.push(Row::info(
                        "rebuild",
                        &format!("projection `{name}`"),
                        format!(
                            "{count} events in {seconds:.2} s ({:.0} events/s)",
                            *count as f64 / seconds.max(1e-9)
                        ),
                    ));
                }
                rows.push(integrity_row("rebuild", &run.integrity));
                let verify_eps = run.verified as f64 / run.verify_seconds.max(1e-9);
                rows.push(Row::target(
                    "rebuild",
                    &format!(
                        "`audit verify` of the rebuilt trail, {} entries",
                        run.verified
                    ),
                    format!("{verify_eps:.0} entries/s ({:.1} s)", run.verify_seconds),
                    "≥ 300000 entries/s",
                    verify_eps >= TARGET_VERIFY_EPS && run.verified > 0,
                ));
                details.insert(
                    "rebuild".into(),
                    json!({
                        "events": run.events,
                        "insert_seconds": run.insert_seconds,
                        "replay_seconds": run.replay_seconds,
                        "events_per_second": eps,
                        "projections": run.projections.iter().map(|(n, c, s)| json!({"projection": n, "events": c, "seconds": s})).collect::<Vec<_>>(),
                        "integrity": run.integrity.to_json(),
                        "verified_entries": run.verified,
                        "verify_seconds": run.verify_seconds,
                    }),
                );
            }
            Err(err) => rows.push(Row::target(
                "rebuild",
                "events/s",
                format!("error: {err:#}"),
                "≥ 100000 events/s",
                false,
            )),
        }
    }

    rows.push(Row::target(
        "memory",
        if before_sse.is_some() {
            "peak RSS of the server (before the sse scenario)"
        } else {
            "peak RSS of the server"
        },
        format!("{rss_peak_mb:.1} MB (at the end {rss_end_mb:.1} MB)"),
        "≤ 100 MB",
        rss_peak_mb <= TARGET_RSS_MB,
    ));
    details.insert(
        "memory".into(),
        json!({"peak_rss_mb": rss_peak_mb, "end_rss_mb": rss_end_mb}),
    );

    // Clean up what the run created.
    if !args.keep {
        jetstream.delete_stream(&world.stream).await.ok();
        pool.close().await;
        env::drop_database(world, &world.database).await.ok();
    }

    Ok((rows, details, series))
}

/// The table so far; every row is also printed as soon as it is known.
struct Rows(Vec<Row>);

impl Rows {
    fn push(&mut self, row: Row) {
        say(format!(
            "  {} | {} | {} | {} {}",
            row.scenario,
            row.figure,
            row.value,
            row.target,
            match row.pass {
                Some(true) => "PASS",
                Some(false) => "MISS",
                None => "",
            }
        ));
        self.0.push(row);
    }
}

type Outcome = (
    Rows,
    serde_json::Map<String, Value>,
    Vec<(String, Histogram<u64>)>,
);

async fn scenarios_with_server(
    args: &Args,
    world: &World,
    server: &Server,
    pool: sqlx::PgPool,
    jetstream: &async_nats::jetstream::Context,
    sizes: Sizes,
    upstream: &FakeUpstream,
) -> anyhow::Result<Outcome> {
    let mut users = Vec::new();
    for n in 0..8 {
        users.push(env::register(server.addr, n, &world.database).await?);
    }
    let bench = Bench {
        addr: server.addr,
        users,
        sizes,
        pool: pool.clone(),
        server_pid: server.pid,
        postmaster: env::postmaster_pid(&pool).await,
    };
    let mut rows = Rows(Vec::new());
    let mut details = serde_json::Map::new();
    let mut series = Vec::new();
    let settle = Duration::from_secs(60);
    let check = |scenario: &'static str| {
        let pool = pool.clone();
        async move {
            let found = checks::check(&pool, Some(jetstream), &world.stream, settle).await;
            match found {
                Ok(found) => found,
                Err(err) => Integrity {
                    divergent: -1,
                    detail: vec![format!("{scenario}: check failed: {err:#}")],
                    ..Integrity::default()
                },
            }
        }
    };

    // ceiling
    let mut ceiling = Vec::new();
    if wanted(args, "ceiling") || wanted(args, "create") {
        say("ceiling: pgbench at c1, c16, c64");
        match scenarios::ceiling(&bench, world).await {
            Ok(found) => ceiling = found,
            Err(err) => rows.push(Row::info("ceiling", "pgbench", format!("error: {err:#}"))),
        }
        for run in &ceiling {
            rows.push(Row::info(
                "ceiling",
                &format!("pgbench insert c{}", run.clients),
                format!("{:.0} tps (mean {:.2} ms)", run.tps, run.latency_ms),
            ));
        }
        details.insert(
            "ceiling".into(),
            json!(ceiling
                .iter()
                .map(|r| json!({"clients": r.clients, "tps": r.tps, "latency_ms": r.latency_ms}))
                .collect::<Vec<_>>()),
        );
    }

    // create
    let create_plan = Arc::new(CreatePlan::new(&bench.users));
    let mut peak = 0.0f64;
    if wanted(args, "create") {
        say("create: POST /v1/tasks at c1, c16, c64");
        let runs = scenarios::create(&bench, &create_plan).await;
        let integrity = check("create").await;
        let mut out = Vec::new();
        for run in &runs {
            let s = &run.stats;
            peak = peak.max(s.throughput());
            let tps = ceiling
                .iter()
                .find(|c| c.clients == run.clients)
                .map(|c| c.tps);
            let ratio = tps.map(|tps| s.throughput() / tps.max(1e-9));
            let figure = format!("c{} throughput", run.clients);
            let value = format!(
                "{:.0} req/s{}",
                s.throughput(),
                ratio
                    .map(|r| format!(" = {r:.2} × ceiling"))
                    .unwrap_or_default()
            );
            if run.clients == 64 {
                rows.push(Row::target(
                    "create",
                    &figure,
                    value,
                    "≥ 0.3 × ceiling c64",
                    ratio.is_some_and(|r| r >= TARGET_CREATE_RATIO),
                ));
            } else {
                rows.push(Row::info("create", &figure, value));
            }
            let latency = format!(
                "p50 {:.2} / p99 {:.2} / p99.9 {:.2} ms, {} errors",
                s.ms(0.5),
                s.ms(0.99),
                s.ms(0.999),
                s.error_count()
            );
            if run.clients == 16 {
                rows.push(Row::target(
                    "create",
                    &format!("c{} latency", run.clients),
                    latency,
                    "p99 ≤ 10 ms",
                    s.ms(0.99) <= TARGET_CREATE_P99_MS && s.ok > 0,
                ));
            } else {
                rows.push(Row::info(
                    "create",
                    &format!("c{} latency", run.clients),
                    latency,
                ));
            }
            if run.clients > 1 {
                rows.push(Row::info(
                    "create",
                    &format!("c{} CPU", run.clients),
                    run.cpu.describe(),
                ));
            }
            series.push((format!("create c{}", run.clients), s.latency_us.clone()));
            let mut j = s.to_json();
            j["cpu"] = run.cpu.to_json();
            j["clients"] = json!(run.clients);
            j["ceiling_tps"] = json!(tps);
            j["ratio_to_ceiling"] = json!(ratio);
            out.push(j);
        }
        rows.push(integrity_row("create", &integrity));
        details.insert(
            "create".into(),
            json!({"runs": out, "integrity": integrity.to_json()}),
        );
    }

    // history
    if wanted(args, "history") {
        say("history: PATCH on tasks with 10 and 1,000 events");
        match scenarios::history(&bench).await {
            Ok(run) => {
                let integrity = check("history").await;
                let ratio = run.large.ms(0.5) / run.small.ms(0.5).max(1e-9);
                rows.push(Row::target(
                    "history",
                    "PATCH p50, 1,000 ÷ 10 events",
                    format!(
                        "{ratio:.2} ({:.2} ms ÷ {:.2} ms)",
                        run.large.ms(0.5),
                        run.small.ms(0.5)
                    ),
                    "≤ 1.3",
                    ratio <= TARGET_HISTORY_RATIO && run.small.ok > 0 && run.large.ok > 0,
                ));
                rows.push(integrity_row("history", &integrity));
                series.push((
                    format!("PATCH, {} events", run.small_events),
                    run.small.latency_us.clone(),
                ));
                series.push((
                    format!("PATCH, {} events", run.large_events),
                    run.large.latency_us.clone(),
                ));
                details.insert(
                    "history".into(),
                    json!({"small": run.small.to_json(), "large": run.large.to_json(), "p50_ratio": ratio, "integrity": integrity.to_json()}),
                );
            }
            Err(err) => rows.push(Row::target(
                "history",
                "p50 ratio",
                format!("error: {err:#}"),
                "≤ 1.3",
                false,
            )),
        }
    }

    // hot keys
    if wanted(args, "hot") {
        say("hot keys: c64 PATCH on 8 tasks");
        match scenarios::hot_keys(&bench).await {
            Ok(s) => {
                let integrity = check("hot").await;
                rows.push(Row::target(
                    "hot keys",
                    "c64 PATCH on 8 tasks: errors",
                    format!(
                        "{:.2} % ({} of {}), {:.0} req/s, p99 {:.1} ms",
                        s.error_rate() * 100.0,
                        s.error_count(),
                        s.total(),
                        s.throughput(),
                        s.ms(0.99)
                    ),
                    "≤ 1 %",
                    s.error_rate() <= TARGET_HOT_ERRORS && s.ok > 0,
                ));
                rows.push(integrity_row("hot keys", &integrity));
                series.push(("PATCH hot keys c64".into(), s.latency_us.clone()));
                details.insert(
                    "hot".into(),
                    json!({"stats": s.to_json(), "integrity": integrity.to_json()}),
                );
            }
            Err(err) => rows.push(Row::target(
                "hot keys",
                "errors",
                format!("error: {err:#}"),
                "≤ 1 %",
                false,
            )),
        }
    }

    // lag
    if wanted(args, "lag") {
        let rate = if peak > 0.0 { peak / 2.0 } else { 200.0 };
        say(format!("lag: creates at {rate:.0}/s"));
        match scenarios::lag(&bench, world, rate).await {
            Ok(run) => {
                let integrity = check("lag").await;
                let mut lag_details = Vec::new();
                for lag in &run.lags {
                    let p99 = lag.lag_us.value_at_quantile(0.99) as f64 / 1000.0;
                    let p50 = lag.lag_us.value_at_quantile(0.5) as f64 / 1000.0;
                    let name = if lag.projection == "audit" {
                        "audit trail"
                    } else {
                        "read model (tasks)"
                    };
                    rows.push(Row::target(
                        "lag",
                        &format!("2xx → applied, {name}"),
                        format!(
                            "p50 {p50:.1} / p99 {p99:.1} ms ({} events{})",
                            lag.lag_us.len(),
                            if lag.missing > 0 {
                                format!(", {} never applied", lag.missing)
                            } else {
                                String::new()
                            }
                        ),
                        "p99 ≤ 20 ms",
                        p99 <= TARGET_LAG_P99_MS && lag.missing == 0 && !lag.lag_us.is_empty(),
                    ));
                    lag_details.push(scenarios::lag_json(lag));
                }
                if let Some(note) = &run.audit_note {
                    rows.push(Row::info(
                        "lag",
                        "2xx → applied, audit trail",
                        format!("n/a ({note})"),
                    ));
                }
                rows.push(Row::info(
                    "lag",
                    "offered load",
                    format!(
                        "{:.0} creates/s (half of peak {peak:.0}), achieved {:.0}/s, {} errors",
                        run.rate,
                        run.commands.throughput(),
                        run.commands.error_count()
                    ),
                ));
                rows.push(integrity_row("lag", &integrity));
                details.insert(
                    "lag".into(),
                    json!({"rate": run.rate, "commands": run.commands.to_json(), "lags": lag_details, "audit_note": run.audit_note, "integrity": integrity.to_json()}),
                );
            }
            Err(err) => rows.push(Row::target(
                "lag",
                "p99",
                format!("error: {err:#}"),
                "p99 ≤ 20 ms",
                false,
            )),
        }
    }

    // read
    if wanted(args, "read") {
        say("read: GET /v1/tasks/{id} and a list page at c16");
        let mut ids = create_plan
            .ids
            .lock()
            .map(|ids| ids[0].clone())
            .unwrap_or_default();
        if ids.len() < 100 {
            let setup = Arc::new(CreatePlan::new(&bench.users[..1]));
            load::closed_loop(
                server.addr,
                8,
                load::Limits::count(50, Duration::from_secs(60)),
                1,
                setup.clone(),
            )
            .await;
            ids.extend(
                setup
                    .ids
                    .lock()
                    .map(|ids| ids[0].clone())
                    .unwrap_or_default(),
            );
        }
        match scenarios::read(&bench, ids).await {
            Ok(run) => {
                let integrity = check("read").await;
                rows.push(Row::target(
                    "read",
                    "GET /v1/tasks/{id} c16",
                    format!(
                        "{:.0} req/s, p50 {:.2} / p99 {:.2} ms, {} errors",
                        run.get.throughput(),
                        run.get.ms(0.5),
                        run.get.ms(0.99),
                        run.get.error_count()
                    ),
                    "≥ 17000 req/s",
                    run.get.throughput() >= TARGET_GET_RPS,
                ));
                rows.push(Row::info(
                    "read",
                    "GET /v1/tasks/{id} c16 CPU",
                    run.get_cpu.describe(),
                ));
                rows.push(Row::target(
                    "read",
                    "GET /v1/tasks?limit=20 c16",
                    format!(
                        "{:.0} req/s, p50 {:.2} / p99 {:.2} ms, {} errors (user with {} tasks)",
                        run.list.throughput(),
                        run.list.ms(0.5),
                        run.list.ms(0.99),
                        run.list.error_count(),
                        run.tasks_of_user
                    ),
                    "≥ 5000 req/s, p99 ≤ 10 ms",
                    run.list.throughput() >= TARGET_LIST_RPS
                        && run.list.ms(0.99) <= TARGET_LIST_P99_MS,
                ));
                rows.push(Row::info(
                    "read",
                    "GET /v1/tasks?limit=20 c16 CPU",
                    run.list_cpu.describe(),
                ));
                rows.push(integrity_row("read", &integrity));
                series.push(("GET task c16".into(), run.get.latency_us.clone()));
                series.push(("GET list c16".into(), run.list.latency_us.clone()));
                details.insert(
                    "read".into(),
                    json!({"get": run.get.to_json(), "get_cpu": run.get_cpu.to_json(), "list": run.list.to_json(), "list_cpu": run.list_cpu.to_json(), "tasks_of_user": run.tasks_of_user, "integrity": integrity.to_json()}),
                );
            }
            Err(err) => rows.push(Row::target(
                "read",
                "GET c16",
                format!("error: {err:#}"),
                "≥ 17000 req/s",
                false,
            )),
        }
    }
    if wanted(args, "chat") {
        chat_scenarios(&bench, upstream, &mut rows, &mut details, &mut series).await;
        let integrity = check("chat").await;
        rows.push(integrity_row("chat", &integrity));
    }
    if wanted(args, "sse") {
        let peak_before = server.rss.peak_mib() * 1.048_576;
        say(format!(
            "sse: {SSE_STREAMS} open GET /v1/sessions/{{id}}/events over {SSE_SESSIONS} sessions"
        ));
        match chat::sse(&bench, server.pid, SSE_STREAMS, SSE_SESSIONS).await {
            Ok(run) => {
                let integrity = check("sse").await;
                sse_rows(&run, &mut rows);
                rows.push(integrity_row("sse", &integrity));
                details.insert(
                    "sse".into(),
                    json!({
                        "streams_wanted": run.wanted, "streams_open": run.opened,
                        "open_errors": run.open_errors, "open_seconds": run.open_seconds,
                        "sessions": run.sessions, "rss_before_mb": run.rss_before_mb,
                        "rss_open_mb": run.rss_open_mb, "rss_after_events_mb": run.rss_after_mb,
                        "events_expected": run.expected, "events_received": run.received,
                        "events_lost": run.lost(), "incomplete_streams": run.incomplete,
                        "deliver_seconds": run.deliver_seconds,
                        "peak_rss_before_mb": peak_before,
                        "integrity": integrity.to_json(),
                    }),
                );
            }
            Err(err) => rows.push(Row::target(
                "sse",
                "server RSS with 1,000 streams open",
                format!("error: {err:#}"),
                "≤ 200 MB",
                false,
            )),
        }
    }
    Ok((rows, details, series))
}

/// `/v1/chat/completions` direct and through Chronicle, the relay check,
/// and exchanges in sessions.
async fn chat_scenarios(
    bench: &Bench,
    upstream: &FakeUpstream,
    rows: &mut Rows,
    details: &mut serde_json::Map<String, Value>,
    series: &mut Vec<(String, Histogram<u64>)>,
) {
    say("chat: POST /v1/chat/completions at c1, direct to the fake upstream and through Chronicle");
    let single = chat::completions(bench, upstream.addr, 1).await;
    // One client: what Chronicle adds to a request, without queueing.
    for (kind, what, direct, through) in [
        ("non-stream", "latency", &single.direct, &single.chronicle),
        (
            "stream",
            "time to first byte",
            &single.direct_stream,
            &single.chronicle_stream,
        ),
    ] {
        rows.push(Row::info(
            "chat",
            &format!("c1 {kind}: added p50 / p99 ({what})"),
            format!(
                "{:.3} / {:.3} ms (through {:.3} / {:.3}, direct {:.3} / {:.3}; {:.0} ÷ {:.0} req/s)",
                through.ms(0.5) - direct.ms(0.5),
                through.ms(0.99) - direct.ms(0.99),
                through.ms(0.5),
                through.ms(0.99),
                direct.ms(0.5),
                direct.ms(0.99),
                through.throughput(),
                direct.throughput()
            ),
        ));
    }
    say(
        "chat: POST /v1/chat/completions at c16, direct to the fake upstream and through Chronicle",
    );
    let run = chat::completions(bench, upstream.addr, chat::CLIENTS).await;
    let pairs = [
        ("non-stream", "latency", &run.direct, &run.chronicle),
        (
            "stream",
            "time to first byte",
            &run.direct_stream,
            &run.chronicle_stream,
        ),
    ];
    for (kind, what, direct, through) in pairs {
        let added50 = through.ms(0.5) - direct.ms(0.5);
        let added99 = through.ms(0.99) - direct.ms(0.99);
        let ok = through.ok > 0 && direct.ok > 0;
        rows.push(Row::target(
            "chat",
            &format!("c16 {kind}: added p50 ({what})"),
            format!(
                "{:.3} ms ({:.3} through − {:.3} direct)",
                added50,
                through.ms(0.5),
                direct.ms(0.5)
            ),
            "≤ 0.1 ms",
            ok && added50 <= TARGET_CHAT_ADDED_P50_MS,
        ));
        rows.push(Row::target(
            "chat",
            &format!("c16 {kind}: added p99 ({what})"),
            format!(
                "{:.3} ms ({:.3} through − {:.3} direct)",
                added99,
                through.ms(0.99),
                direct.ms(0.99)
            ),
            "≤ 1 ms",
            ok && added99 <= TARGET_CHAT_ADDED_P99_MS,
        ));
        let ratio = through.throughput() / direct.throughput().max(1e-9);
        rows.push(Row::target(
            "chat",
            &format!("c16 {kind}: throughput through ÷ direct"),
            format!(
                "{ratio:.2} ({:.0} ÷ {:.0} req/s; {} / {} errors)",
                through.throughput(),
                direct.throughput(),
                through.error_count(),
                direct.error_count()
            ),
            "≥ 0.5",
            ok && ratio >= TARGET_CHAT_THROUGHPUT_RATIO && through.error_count() == 0,
        ));
        series.push((format!("chat {kind} direct"), direct.latency_us.clone()));
        series.push((format!("chat {kind} through"), through.latency_us.clone()));
    }
    let relay = chat::relay_check(bench.addr, &bench.users[0], &upstream.paced).await;
    let relay_json = match &relay {
        Ok(check) => {
            rows.push(Row::target(
                "chat",
                "stream relays each chunk as it arrives",
                format!(
                    "{} of {} chunks, each at most {:.1} ms after the upstream sent it (sent {} ms apart)",
                    check.received,
                    fake_upstream::PACED_CHUNKS,
                    check.max_delay.as_secs_f64() * 1000.0,
                    fake_upstream::PACED_GAP.as_millis()
                ),
                "all, each before the next is sent",
                check.ok(),
            ));
            json!({"chunks": check.received, "max_delay_ms": check.max_delay.as_secs_f64() * 1000.0})
        }
        Err(err) => {
            rows.push(Row::target(
                "chat",
                "stream relays each chunk as it arrives",
                format!("error: {err:#}"),
                "all, each before the next is sent",
                false,
            ));
            json!({"error": format!("{err:#}")})
        }
    };
    say("chat: POST /v1/sessions/{id}/messages at c16");
    let exchange_json = match chat::exchanges(bench).await {
        Ok(s) => {
            let added99 = s.ms(0.99) - run.direct.ms(0.99);
            rows.push(Row::target(
                "chat",
                "c16 session exchange: added p99",
                format!(
                    "{added99:.2} ms ({:.2} − {:.3} direct; p50 {:.2} ms, {:.0} req/s, {} errors)",
                    s.ms(0.99),
                    run.direct.ms(0.99),
                    s.ms(0.5),
                    s.throughput(),
                    s.error_count()
                ),
                "≤ 10 ms",
                s.ok > 0 && added99 <= TARGET_EXCHANGE_ADDED_P99_MS,
            ));
            series.push(("session exchange c16".into(), s.latency_us.clone()));
            s.to_json()
        }
        Err(err) => {
            rows.push(Row::target(
                "chat",
                "c16 session exchange: added p99",
                format!("error: {err:#}"),
                "≤ 10 ms",
                false,
            ));
            json!({"error": format!("{err:#}")})
        }
    };
    details.insert(
        "chat".into(),
        json!({
            "clients": run.clients,
            "c1": {"direct": single.direct.to_json(), "through": single.chronicle.to_json(),
                "direct_stream_ttfb": single.direct_stream.to_json(),
                "through_stream_ttfb": single.chronicle_stream.to_json()},
            "direct": run.direct.to_json(), "through": run.chronicle.to_json(),
            "direct_stream_ttfb": run.direct_stream.to_json(),
            "through_stream_ttfb": run.chronicle_stream.to_json(),
            "relay": relay_json, "session_exchange": exchange_json,
        }),
    );
}

fn sse_rows(run: &chat::SseRun, rows: &mut Rows) {
    rows.push(Row::info(
        "sse",
        "streams open",
        format!(
            "{} of {} in {:.1} s over {} sessions{}",
            run.opened,
            run.wanted,
            run.open_seconds,
            run.sessions,
            if run.open_errors.is_empty() {
                String::new()
            } else {
                format!("; failed: {}", run.open_errors.join("; "))
            }
        ),
    ));
    rows.push(Row::target(
        "sse",
        &format!("server RSS with {} streams open", run.wanted),
        format!(
            "{:.1} MB ({:.1} MB before opening; {:.1} MB after the events)",
            run.rss_open_mb, run.rss_before_mb, run.rss_after_mb
        ),
        "≤ 200 MB",
        run.opened == run.wanted && run.rss_open_mb <= TARGET_SSE_RSS_MB,
    ));
    rows.push(Row::target(
        "sse",
        "every stream receives every event",
        format!(
            "{} lost ({} of {} received; {} streams incomplete; in {:.2} s)",
            run.lost(),
            run.received,
            run.expected,
            run.incomplete,
            run.deliver_seconds
        ),
        "lost = 0",
        run.expected > 0 && run.lost() == 0 && run.opened == run.wanted,
    ));
}

fn integrity_row(scenario: &str, integrity: &Integrity) -> Row {
    let value = match integrity.stream_messages {
        Some(messages) => format!(
            "{} lost, {} divergent ({} events, {} on the stream, settled in {} ms)",
            integrity.lost, integrity.divergent, integrity.events, messages, integrity.settle_ms
        ),
        None => format!(
            "{} divergent ({} events)",
            integrity.divergent, integrity.events
        ),
    };
    let value = if integrity.detail.is_empty() {
        value
    } else {
        format!("{value}: {}", integrity.detail.join("; "))
    };
    Row::target(
        scenario,
        "lost events / read-model divergence",
        value,
        "0 / 0",
        integrity.ok(),
    )
}

async fn machine_info(world: &World, args: &Args) -> Value {
    let cpuinfo = env::read_trimmed("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = env::read_trimmed("/proc/meminfo");
    let mem_kib: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let setting = |name: &'static str| {
        let url = world.admin_url.clone();
        async move {
            match sqlx::PgPool::connect(&url).await {
                Ok(pool) => {
                    let value: String = sqlx::query_scalar(&format!("show {name}"))
                        .fetch_one(&pool)
                        .await
                        .unwrap_or_default();
                    pool.close().await;
                    value
                }
                Err(_) => String::new(),
            }
        }
    };
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu_model,
        "memory_gib": (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "kernel": env::read_trimmed("/proc/sys/kernel/osrelease"),
        "load_before": env::read_trimmed("/proc/loadavg"),
        "postgres": setting("server_version").await,
        "fsync": setting("fsync").await,
        "synchronous_commit": setting("synchronous_commit").await,
        "commit": env::command_line("git", &["rev-parse", "--short", "HEAD"]).await,
        "dirty": !env::command_line("git", &["status", "--porcelain", "--untracked-files=no"]).await.is_empty(),
        "mode": if args.quick { "quick" } else { "full" },
        "nats": env::command_line("nats-server", &["--version"]).await,
    })
}
