# Chronicle developer tasks. Local Postgres + NATS JetStream come from deploy/dev-services.sh.
#
#   make test            start services, install schemathesis (venv), run the workspace tests
#   make test-faults     start services, run the fault injection harness (CHRONICLE_FAULTS_SEED=N replays)
#   make run             start services, migrate, serve
#   make bench [QUICK=1] start services, run the benchmark (release build)
#   make soak [SOAK_MINUTES=30] start services, steady mixed load sampled for a trend (release build, not in CI)
#   make lint            rustfmt check + clippy -D warnings
#   make services | stop | clean-data

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

export CHRONICLE_DATA_DIR ?= $(CURDIR)/.data

DEV_SERVICES := $(CURDIR)/deploy/dev-services.sh

# Put cargo on PATH when it was installed by rustup but the shell profile was not loaded.
CARGO_ON_PATH := if ! command -v cargo >/dev/null 2>&1 && [ -f "$$HOME/.cargo/env" ]; then . "$$HOME/.cargo/env"; fi; \
	command -v cargo >/dev/null 2>&1 || { echo "make: cargo not found (install Rust via rustup)" >&2; exit 1; }

# Export DATABASE_URL / NATS_URL (kept when already set). The assignment makes a failing
# script abort the recipe, which a bare eval "$$(...)" would not.
SERVICES_ENV := services_env="$$($(DEV_SERVICES) env)"; eval "$$services_env"

# nats-server for tests that spawn their own server (it lives in /usr/sbin on Debian).
NATS_BIN_ENV := export CHRONICLE_NATS_SERVER_BIN="$${CHRONICLE_NATS_SERVER_BIN:-$$(PATH="$$PATH:/usr/local/sbin:/usr/sbin:/sbin"; command -v nats-server || true)}"

.PHONY: help services run test test-faults bench soak lint stop clean-data

help:
	@echo "targets: services run test test-faults bench [QUICK=1] soak [SOAK_MINUTES=30] lint stop clean-data"
	@echo "data dir: $(CHRONICLE_DATA_DIR)"

services:
	@$(DEV_SERVICES) up

run: services
	@$(CARGO_ON_PATH); \
	$(SERVICES_ENV); \
	cargo run -- migrate; \
	exec cargo run -- serve --all

test: services
	@$(CARGO_ON_PATH); \
	$(SERVICES_ENV); \
	$(NATS_BIN_ENV); \
	export CHRONICLE_SCHEMATHESIS="$$($(CURDIR)/deploy/schemathesis.sh install)"; \
	if cargo nextest --version >/dev/null 2>&1; then \
		cargo nextest run --workspace --no-fail-fast; \
	else \
		echo "make: cargo-nextest not installed, using cargo test"; \
		cargo test --workspace; \
	fi

# The fault injection harness (tests/faults.rs, docs/testing.md): API, relay and
# projection worker as separate processes with a nats-server of their own,
# SIGKILL / SIGSTOP / a full store / poison under load, checks after each fault.
# Seeded (CHRONICLE_FAULTS_SEED=N to replay); report in target/faults/report.md.
test-faults: services
	@$(CARGO_ON_PATH); \
	$(SERVICES_ENV); \
	$(NATS_BIN_ENV); \
	if cargo nextest --version >/dev/null 2>&1; then \
		cargo nextest run -p chronicle --test faults --run-ignored all --no-capture; \
	else \
		echo "make: cargo-nextest not installed, using cargo test"; \
		cargo test -p chronicle --test faults -- --include-ignored --nocapture; \
	fi

# Release build, then chronicle-bench: own database and stream, the server as a
# child on a free 127.0.0.1 port, report in target/bench/. QUICK=1: ~2 minutes.
bench: services
	@$(CARGO_ON_PATH); \
	$(SERVICES_ENV); \
	cargo build --release --bin chronicle --bin chronicle-bench; \
	QUICK="$(QUICK)" ./target/release/chronicle-bench --out target/bench $(BENCH_ARGS)

# The soak (not in CI; docs/performance.md, "Soak"): the release server as for
# bench, SOAK_MINUTES of steady mixed load at SOAK_RATE req/s, RSS, open fds,
# Postgres connections and lags sampled every SOAK_SAMPLE_SECS, a trend verdict
# and the integrity check; report in target/soak/. Fails on an upward trend.
SOAK_MINUTES ?= 30
SOAK_SAMPLE_SECS ?= 10
SOAK_RATE ?= 100

soak: services
	@$(CARGO_ON_PATH); \
	$(SERVICES_ENV); \
	cargo build --release --bin chronicle --bin chronicle-bench; \
	./target/release/chronicle-bench --soak --out target/soak --minutes "$(SOAK_MINUTES)" \
		--sample-secs "$(SOAK_SAMPLE_SECS)" --rate "$(SOAK_RATE)" $(SOAK_ARGS)

lint:
	@$(CARGO_ON_PATH); \
	cargo fmt --all --check; \
	cargo clippy --workspace --all-targets -- -D warnings

stop:
	@$(DEV_SERVICES) down

clean-data: stop
	@dir="$(CHRONICLE_DATA_DIR)"; \
	case "$$dir" in ""|/|"$$HOME"|"$(CURDIR)") echo "make: refusing to remove '$$dir'" >&2; exit 1 ;; esac; \
	echo "make: removing $$dir"; \
	rm -rf -- "$$dir"
