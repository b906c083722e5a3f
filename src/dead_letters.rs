//! `chronicle dead-letters`: inspect the events parked by the relay or a
//! projection, and ask for their release once the cause is fixed (see
//! `docs/architecture.md`, "Poison events").

use anyhow::Context;
use chronicle_nats::dead_letter::{self, AggregateKey};
use chrono::{DateTime, Utc};
use clap::Subcommand;
use sqlx::PgPool;

#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// List parked events, oldest first (open ones only unless --all).
    List {
        /// Include released ones.
        #[arg(long)]
        all: bool,
    },
    /// Retry the parked events of one aggregate (or of all) in sequence
    /// order; the stage that parked them does it at once. One that still
    /// fails stays parked with its new reason, and so does everything behind it.
    Release {
        /// `<AggregateType>:<aggregate_id>`, e.g. `User:6b1f…`.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        aggregate: Option<String>,
        /// Every open dead letter.
        #[arg(long)]
        all: bool,
        /// Only this stage: `relay` or a projection name.
        #[arg(long)]
        stage: Option<String>,
    },
}

/// One row of `dead_letters`, as listed.
#[derive(Debug, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: i64,
    pub stage: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub reason: String,
    pub parked_at: DateTime<Utc>,
    pub release_requested_at: Option<DateTime<Utc>>,
    pub released_at: Option<DateTime<Utc>>,
}

/// The parked events, oldest first.
pub async fn list(pool: &PgPool, include_released: bool) -> anyhow::Result<Vec<DeadLetter>> {
    sqlx::query_as(
        "select id, stage, aggregate_type, aggregate_id, sequence, event_type, reason, parked_at, \
           release_requested_at, released_at \
         from dead_letters where $1 or released_at is null order by id",
    )
    .bind(include_released)
    .fetch_all(pool)
    .await
    .context("reading dead_letters")
}

/// Parses `<AggregateType>:<aggregate_id>`.
pub fn parse_aggregate(raw: &str) -> anyhow::Result<AggregateKey> {
    match raw.split_once(':') {
        Some((kind, id)) if !kind.is_empty() && !id.is_empty() => {
            Ok((kind.to_string(), id.to_string()))
        }
        _ => anyhow::bail!("--aggregate must look like `Type:id`, got `{raw}`"),
    }
}

pub async fn run(pool: &PgPool, command: DeadLettersCommand) -> anyhow::Result<()> {
    match command {
        DeadLettersCommand::List { all } => {
            let rows = list(pool, all).await?;
            if rows.is_empty() {
                println!("no parked events");
            }
            for row in rows {
                let state = match (row.released_at, row.release_requested_at) {
                    (Some(at), _) => format!("released {}", at.to_rfc3339()),
                    (None, Some(_)) => "release requested".to_string(),
                    (None, None) => "parked".to_string(),
                };
                println!(
                    "#{} [{}] {}:{}:{} {} parked {} ({state}): {}",
                    row.id,
                    row.stage,
                    row.aggregate_type,
                    row.aggregate_id,
                    row.sequence,
                    row.event_type,
                    row.parked_at.to_rfc3339(),
                    row.reason
                );
            }
            Ok(())
        }
        DeadLettersCommand::Release {
            aggregate,
            all: _,
            stage,
        } => {
            let aggregate = aggregate.as_deref().map(parse_aggregate).transpose()?;
            let mut conn = pool.acquire().await?;
            let marked =
                dead_letter::request_release(&mut conn, stage.as_deref(), aggregate.as_ref())
                    .await
                    .context("requesting the release")?;
            println!("release requested for {marked} parked event(s); `chronicle dead-letters list` shows the outcome");
            Ok(())
        }
    }
}
