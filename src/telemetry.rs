//! Logging (tracing, pretty or JSON) and the Prometheus metrics recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogSettings;

/// Installs the global tracing subscriber. Safe to call more than once (tests).
pub fn init_tracing(settings: &LogSettings) {
    let filter = EnvFilter::try_new(&settings.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_target(true);
    let _ = if settings.json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (several apps in one test
            // process); ours then only renders what it saw, which is acceptable.
            let _ = metrics::set_global_recorder(recorder);
            describe_metrics();
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// How often the recorder drains its histograms. Without it they are only
/// drained when `/metrics` is scraped, so a process nobody scrapes (a
/// `chronicle relay` or `chronicle project`) would grow without bound.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        });
    if let Err(err) = spawned {
        tracing::warn!(%err, "could not start the metrics upkeep thread");
    }
}

/// `# HELP` (and the unit, which every name also carries) of every metric,
/// so that `/metrics` describes what it exports.
fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    // HTTP
    describe_counter!(
        "chronicle_http_requests_total",
        Unit::Count,
        "HTTP requests answered, by method, route and status"
    );
    describe_histogram!(
        "chronicle_http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request, by method and route"
    );
    describe_counter!(
        "chronicle_http_requests_shed_total",
        Unit::Count,
        "Requests refused with 503 at once because the in-flight cap was reached"
    );
    describe_counter!(
        "chronicle_http_body_timeouts_total",
        Unit::Count,
        "Requests answered 503 because their body did not arrive within the body read timeout"
    );
    describe_counter!(
        "chronicle_rate_limited_total",
        Unit::Count,
        "Requests refused with 429 by the per-user or per-IP rate limits"
    );
    describe_counter!(
        "chronicle_streams_refused_total",
        Unit::Count,
        "Streamed answers refused with 503 because every stream slot was taken"
    );
    describe_counter!(
        "chronicle_consistency_refused_total",
        Unit::Count,
        "Read-your-writes waits refused because too many queries were waiting"
    );
    describe_counter!(
        "chronicle_consistency_timeouts_total",
        Unit::Count,
        "Read-your-writes waits that timed out before the read model caught up"
    );
    // Commands
    describe_counter!(
        "chronicle_commands_total",
        Unit::Count,
        "Commands handled, by aggregate and outcome (accepted, rejected, conflict, failed)"
    );
    describe_histogram!(
        "chronicle_command_duration_seconds",
        Unit::Seconds,
        "Time to load, handle and commit a command, by aggregate"
    );
    describe_counter!(
        "chronicle_aggregate_loads_total",
        Unit::Count,
        "Aggregates loaded from the event store (snapshot and events after it), by aggregate"
    );
    describe_counter!(
        "chronicle_command_conflicts_retried_total",
        Unit::Count,
        "Optimistic-concurrency conflicts retried, by aggregate"
    );
    describe_counter!(
        "chronicle_events_appended_total",
        Unit::Count,
        "Events committed to the event store, by aggregate"
    );
    // Relay and projections
    describe_counter!(
        "chronicle_relay_published_events_total",
        Unit::Count,
        "Events the relay published to JetStream and saw acknowledged"
    );
    describe_histogram!(
        "chronicle_relay_batch_seconds",
        Unit::Seconds,
        "Time the relay took to publish one batch and store its checkpoint"
    );
    describe_counter!(
        "chronicle_relay_errors_total",
        Unit::Count,
        "Relay batches that failed and were retried"
    );
    describe_gauge!(
        "chronicle_relay_lag_seconds",
        Unit::Seconds,
        "Age of the newest event the relay published when it published it"
    );
    describe_gauge!(
        "chronicle_relay_leader",
        "1 while this process holds the relay's leadership lock, else 0"
    );
    describe_gauge!(
        "chronicle_relay_position",
        "Global position of the last event the relay published"
    );
    describe_counter!(
        "chronicle_projection_events_total",
        Unit::Count,
        "Events applied, by projection"
    );
    describe_histogram!(
        "chronicle_projection_batch_seconds",
        Unit::Seconds,
        "Time to apply one batch and its checkpoint, by projection"
    );
    describe_gauge!(
        "chronicle_projection_lag_seconds",
        Unit::Seconds,
        "Age of the newest event a projection applied when it applied it"
    );
    describe_gauge!(
        "chronicle_projection_failed",
        "1 while a projection is stopped by an error, else 0"
    );
    describe_counter!(
        "chronicle_dead_letters_parked_total",
        Unit::Count,
        "Events parked as dead letters, by stage (relay or a projection)"
    );
    // Chat
    describe_counter!(
        "chronicle_llm_retries_total",
        Unit::Count,
        "Upstream LLM requests retried before the first byte, by provider"
    );
    describe_counter!(
        "chronicle_chat_streams_refused_total",
        Unit::Count,
        "Chat requests refused with 429: the user's streamed answers were at their cap"
    );
    describe_counter!(
        "chronicle_chat_token_budget_refused_total",
        Unit::Count,
        "Chat requests refused with 429: the user's tokens per minute were spent"
    );
}
