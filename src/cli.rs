//! The command line: one binary, one subcommand per process role.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use chronicle_projections::Projection;

use crate::config::Settings;
use crate::startup::{cancel_on_signal, connect_database, migrate, Application, Components};
use crate::telemetry::init_tracing;

/// Chronicle: an event-sourced CQRS backend.
#[derive(Debug, Parser)]
#[command(name = "chronicle", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate a new signing key. Restart the servers: the new key signs,
    /// the old ones still verify the tokens they signed until those expire.
    Rotate,
    /// Make a new master key active for sealed secrets and re-wrap every data
    /// key under it. With keys in the data dir a new key file is generated;
    /// with CHRONICLE_MASTER_KEYS, put the new key first before running this.
    /// Then restart the servers.
    RotateMaster,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a role (admin, auditor, analyst, developer) to a user; it takes effect at their next login.
    GrantRole {
        #[arg(long)]
        email: String,
        #[arg(long)]
        role: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum FilesCommand {
    /// Remove blobs that no file references any more and uploads abandoned
    /// for over an hour (the API also does this every
    /// CHRONICLE_FILES_SWEEP_INTERVAL_SECS).
    Sweep,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API (and, with --all, the relay and projections too).
    Serve {
        /// Also run the relay and the projection workers in this process.
        #[arg(long)]
        all: bool,
    },
    /// Run the relay: publish committed events to JetStream in commit order.
    Relay,
    /// Run the projection workers that build the read models.
    Project,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage the JWT signing keys in the data dir.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage user accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Verify or export the compliance audit trail.
    Audit {
        #[command(subcommand)]
        command: crate::audit::cli::AuditCommand,
    },
    /// Inspect and release events parked by the relay or a projection.
    DeadLetters {
        #[command(subcommand)]
        command: crate::dead_letters::DeadLettersCommand,
    },
    /// Maintain the workspace files on disk.
    Files {
        #[command(subcommand)]
        command: FilesCommand,
    },
    /// Rebuild read models from the event store, then hand over to the live consumers.
    Replay {
        /// A projection name (`users`, `auth_sessions`, `tasks`, `audit`, …) or `all`.
        #[arg(long)]
        projection: String,
    },
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    init_tracing(&settings.log);
    match cli.command {
        Command::Serve { all } => {
            let components = if all {
                Components::ALL
            } else {
                Components {
                    api: true,
                    relay: false,
                    projections: false,
                }
            };
            serve(settings, components).await
        }
        Command::Relay => {
            serve(
                settings,
                Components {
                    api: false,
                    relay: true,
                    projections: false,
                },
            )
            .await
        }
        Command::Project => {
            serve(
                settings,
                Components {
                    api: false,
                    relay: false,
                    projections: true,
                },
            )
            .await
        }
        Command::Migrate => {
            let pool = connect_database(&settings).await?;
            migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Rotate,
        } => {
            let path = crate::auth::keys::rotate(&settings.data_dir)?;
            println!("new signing key: {}", path.display());
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::RotateMaster,
        } => {
            let pool = connect_database(&settings).await?;
            let report = crate::secrets::rotate_master(&pool, &settings).await?;
            println!(
                "master key {} is active; {} data keys re-wrapped under it. \
                 Restart the servers so they seal with it.",
                report.master_key_id, report.rewrapped
            );
            Ok(())
        }
        Command::User {
            command: UserCommand::GrantRole { email, role },
        } => {
            let pool = connect_database(&settings).await?;
            let roles =
                crate::accounts::grant_role(&pool, settings.auth.argon2, &email, &role).await?;
            println!("{email}: roles are now {}", roles.join(", "));
            Ok(())
        }
        Command::Audit { command } => crate::audit::cli::run(&settings, command).await,
        Command::DeadLetters { command } => {
            let pool = connect_database(&settings).await?;
            crate::dead_letters::run(&pool, command).await
        }
        Command::Files {
            command: FilesCommand::Sweep,
        } => {
            let pool = connect_database(&settings).await?;
            let swept = crate::file_blobs::sweep(
                &pool,
                &settings.data_dir,
                crate::file_blobs::ABANDONED_UPLOAD_AGE,
            )
            .await?;
            println!(
                "removed {} orphaned blobs and {} abandoned uploads",
                swept.blobs, swept.uploads
            );
            Ok(())
        }
        Command::Replay { projection } => replay(&settings, &projection).await,
    }
}

async fn serve(settings: Settings, components: Components) -> anyhow::Result<()> {
    let app = Application::build(settings, components).await?;
    cancel_on_signal(app.shutdown_token());
    app.run().await
}

async fn replay(settings: &Settings, name: &str) -> anyhow::Result<()> {
    let projections = if name == "all" {
        chronicle_projections::all_projections()
    } else {
        let known: Vec<&str> = chronicle_projections::all_projections()
            .iter()
            .map(|p| p.name())
            .collect();
        vec![chronicle_projections::projection_named(name)
            .with_context(|| format!("no projection `{name}`; known: {}, all", known.join(", ")))?]
    };
    let pool = connect_database(settings).await?;
    // Each projection rebuilds in a transaction of its own, all of them on
    // one read of the store (Postgres works while Rust decodes and hashes).
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix:>16} [{bar:40}] {pos}/{len} events {per_sec} {elapsed}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let by_name: HashMap<&str, ProgressBar> = projections
        .iter()
        .map(|projection| {
            let bar = bars.add(ProgressBar::new(0));
            bar.set_style(style.clone());
            bar.set_prefix(projection.name());
            bar.enable_steady_tick(Duration::from_millis(200));
            (projection.name(), bar)
        })
        .collect();
    let progress = |name: &str, done: u64, total: u64| {
        if let Some(bar) = by_name.get(name) {
            bar.set_length(total);
            bar.set_position(done);
        }
    };
    let together: Vec<&dyn Projection> = projections.iter().map(|p| p.as_ref()).collect();
    let rebuilt = chronicle_projections::replay::rebuild_together(&pool, &together, &progress)
        .await
        .context("rebuilding")?;
    for bar in by_name.values() {
        bar.finish();
    }
    for rebuilt in rebuilt {
        let seconds = rebuilt.elapsed.as_secs_f64();
        bars.suspend(|| {
            println!(
                "{}: {} events in {seconds:.2}s ({:.0} events/s)",
                rebuilt.projection,
                rebuilt.events,
                rebuilt.events as f64 / seconds.max(1e-9)
            )
        });
    }
    Ok(())
}
