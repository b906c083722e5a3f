//! `chronicle audit verify|export`: the operator's side of the audit trail.
//! Both are recorded as `AuditQueried` events (actor `cli:<OS user>`).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chronicle_aggregates::audit_query::AuditQuery;
use chronicle_projections::audit::verify::Progress;
use chrono::{DateTime, Utc};
use clap::Subcommand;
use futures::TryStreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::PgPool;
use tokio::io::AsyncWriteExt;

use crate::audit::export::Format;
use crate::audit::record::{cli_metadata, record_query};
use crate::audit::{verify, Filters, VerifyingKeys};
use crate::auth::SigningKeys;
use crate::commands::CommandExecutor;
use crate::config::Settings;
use crate::startup::connect_database;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the audit chain, check it against the event store and the
    /// signed checkpoints. Exits non-zero and names the first bad seq on failure.
    Verify {
        /// Verify checkpoint signatures with this JWKS file (e.g. a saved
        /// copy of /.well-known/jwks.json) instead of the server's keys.
        #[arg(long)]
        jwks: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Export events with their audit entries, in commit order.
    Export {
        /// `ndjson` or `csv`.
        #[arg(long, default_value = "ndjson")]
        format: Format,
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[arg(long)]
        aggregate_type: Option<String>,
        #[arg(long)]
        aggregate_id: Option<String>,
        #[arg(long)]
        actor_id: Option<String>,
        #[arg(long)]
        event_type: Option<String>,
        /// Recorded at or after (RFC 3339).
        #[arg(long)]
        from: Option<DateTime<Utc>>,
        /// Recorded at or before (RFC 3339).
        #[arg(long)]
        to: Option<DateTime<Utc>>,
        #[arg(long)]
        after_position: Option<i64>,
        /// At most this many events.
        #[arg(long)]
        limit: Option<i64>,
    },
}

/// Runs an audit subcommand.
pub async fn run(settings: &Settings, command: AuditCommand) -> anyhow::Result<()> {
    let pool = connect_database(settings).await?;
    match command {
        AuditCommand::Verify { jwks, json } => run_verify(settings, &pool, jwks, json).await,
        AuditCommand::Export {
            format,
            output,
            aggregate_type,
            aggregate_id,
            actor_id,
            event_type,
            from,
            to,
            after_position,
            limit,
        } => {
            let filters = Filters {
                aggregate_type,
                aggregate_id,
                actor_id,
                event_type,
                from,
                to,
                after_position,
            };
            run_export(&pool, &filters, format, output, limit).await
        }
    }
}

async fn record(
    pool: &PgPool,
    route: &str,
    filters: std::collections::BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let executor = CommandExecutor::<AuditQuery>::new(pool.clone(), ());
    record_query(&executor, None, route, filters, cli_metadata()).await
}

async fn run_verify(
    settings: &Settings,
    pool: &PgPool,
    jwks_file: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let jwks = match &jwks_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => SigningKeys::load_or_generate(&settings.auth, &settings.data_dir)
            .context("loading the server's keys (or pass --jwks)")?
            .jwks(),
    };
    let keys = VerifyingKeys::from_jwks(&jwks)?;
    let mut filters = std::collections::BTreeMap::new();
    if let Some(path) = &jwks_file {
        filters.insert("jwks".to_string(), path.display().to_string());
    }
    record(pool, "cli audit verify", filters).await?;

    let progress = Arc::new(Progress::default());
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("verify [{bar:40}] {pos}/{len} entries {per_sec} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let verifying = tokio::spawn({
        let pool = pool.clone();
        let progress = progress.clone();
        async move { verify(&pool, &keys, progress).await }
    });
    let ticker = {
        let bar = bar.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            loop {
                bar.set_length(progress.total.load(Ordering::Relaxed));
                bar.set_position(progress.done.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let report = verifying.await.context("verifier task")??;
    ticker.abort();
    bar.set_length(progress.total.load(Ordering::Relaxed));
    bar.set_position(progress.done.load(Ordering::Relaxed));
    bar.finish();
    let seconds = started.elapsed().as_secs_f64();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} entries of generation {} checked in {seconds:.2}s ({:.0} entries/s); head seq {} hash {}; {} checkpoints; {} events not yet in the trail",
            report.entries_checked,
            report.generation,
            report.entries_checked as f64 / seconds.max(1e-9),
            report.head_seq,
            report.head_hash,
            report.checkpoints_checked,
            report.pending_events,
        );
    }
    match (report.ok, report.first_bad_seq) {
        (true, _) => {
            if !json {
                println!("ok: the audit trail verifies");
            }
            Ok(())
        }
        (false, seq) => anyhow::bail!(
            "audit trail verification failed: first bad seq {}: {}",
            seq.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
            report.reason.unwrap_or_default()
        ),
    }
}

async fn run_export(
    pool: &PgPool,
    filters: &Filters,
    format: Format,
    output: Option<PathBuf>,
    limit: Option<i64>,
) -> anyhow::Result<()> {
    let mut described = filters.describe();
    described.insert("format".into(), format.extension().into());
    if let Some(limit) = limit {
        described.insert("limit".into(), limit.to_string());
    }
    if let Some(path) = &output {
        described.insert("output".into(), path.display().to_string());
    }
    record(pool, "cli audit export", described).await?;

    let started = Instant::now();
    let mut writer: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &output {
        Some(path) => Box::new(
            tokio::fs::File::create(path)
                .await
                .with_context(|| format!("creating {}", path.display()))?,
        ),
        None => Box::new(tokio::io::stdout()),
    };
    let mut stream = std::pin::pin!(crate::audit::export::stream(
        pool.clone(),
        filters,
        format,
        limit,
        crate::audit::stream::StreamSlot::unbounded(),
    ));
    let mut lines = 0u64;
    while let Some(chunk) = stream.try_next().await.context("exporting")? {
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        writer
            .write_all(&chunk)
            .await
            .context("writing the export")?;
    }
    writer.flush().await?;
    let events = match format {
        Format::Csv => lines.saturating_sub(1),
        Format::Ndjson => lines,
    };
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "exported {events} events in {seconds:.2}s ({:.0} events/s)",
        events as f64 / seconds.max(1e-9)
    );
    Ok(())
}
