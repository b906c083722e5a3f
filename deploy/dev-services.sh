#!/usr/bin/env bash
# Local development services for Chronicle: Postgres + NATS JetStream.
#
#   deploy/dev-services.sh up       install what is missing (apt), start both (idempotent)
#   deploy/dev-services.sh down     stop both
#   deploy/dev-services.sh status   show whether each runs
#   deploy/dev-services.sh env      print export lines: eval "$(deploy/dev-services.sh env)"
#
# Environment:
#   CHRONICLE_DATA_DIR           state directory (default ./.data, made absolute)
#   CHRONICLE_PG_PORT            Postgres port on 127.0.0.1 (default 55432)
#   CHRONICLE_PG_FSYNC           Postgres fsync setting (default on)
#   CHRONICLE_NATS_PORT          NATS client port on 127.0.0.1 (default 54222)
#   CHRONICLE_NATS_MONITOR_PORT  NATS monitoring port (default 58222)
#   DATABASE_URL                 if set, Postgres is external: not installed/started here
#   NATS_URL                     if set, NATS is external: not started here
set -euo pipefail

# nats-server, runuser and friends live in sbin, which is not on PATH for non-root users.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

PG_PORT="${CHRONICLE_PG_PORT:-55432}"
PG_FSYNC="${CHRONICLE_PG_FSYNC:-on}"
NATS_PORT="${CHRONICLE_NATS_PORT:-54222}"
NATS_MONITOR_PORT="${CHRONICLE_NATS_MONITOR_PORT:-58222}"
PG_DB="chronicle"
PG_OS_USER="postgres"
NATS_READY_TIMEOUT=20
APT_LOCK_TIMEOUT=600

DATA="${CHRONICLE_DATA_DIR:-./.data}"
if command -v realpath >/dev/null 2>&1; then
    DATA="$(realpath -m -- "$DATA")"
else
    case "$DATA" in /*) ;; *) DATA="$PWD/${DATA#./}" ;; esac
    DATA="${DATA%/}"
fi

PG_ROOT="$DATA/postgres"        # owned by the postgres OS user when run as root
PGDATA="$PG_ROOT/data"          # the cluster
PG_SOCK_DIR="$PG_ROOT/run"      # unix socket directory
PG_LOG="$PG_ROOT/postgres.log"
NATS_STORE="$DATA/nats"
NATS_PID_FILE="$DATA/nats.pid"
NATS_LOG="$DATA/nats.log"

log() { printf 'dev-services: %s\n' "$*"; }
warn() { printf 'dev-services: %s\n' "$*" >&2; }
die() {
    local msg="$1" logfile="${2:-}"
    printf 'dev-services: error: %s\n' "$msg" >&2
    if [[ -n "$logfile" && -r "$logfile" ]]; then
        printf 'dev-services: last lines of %s:\n' "$logfile" >&2
        tail -n 30 "$logfile" | sed 's/^/    /' >&2
    fi
    exit 1
}

is_root() { [[ "$(id -u)" -eq 0 ]]; }

# Close every file descriptor above 2 in the current (sub)shell, so long-lived servers
# started from it do not keep the caller's pipes (CI log streams, $(...) captures, our
# lock on fd 9) open. Use inside ( ... ) only.
close_extra_fds() {
    local fd
    for fd in /proc/self/fd/*; do
        fd="${fd##*/}"
        if [[ "$fd" =~ ^[0-9]+$ ]] && ((fd > 2)); then
            { exec {fd}>&-; } 2>/dev/null || true
        fi
    done
}

# ---------------------------------------------------------------- packages --

# Newest /usr/lib/postgresql/<version>/bin that has initdb, or nothing.
find_pg_bin() {
    local d best=""
    while IFS= read -r d; do
        [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]] && best="$d"
    done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V)
    [[ -n "$best" ]] && printf '%s\n' "$best"
}

find_nats_bin() { command -v nats-server 2>/dev/null || true; }

# Run apt-get (as root, or through sudo), waiting for locks held by other apt/dpkg runs.
# DPkg::Lock::Timeout only covers the dpkg lock; `apt-get update` fails at once on the
# lists lock, so lock failures are retried here until the same deadline.
apt_get() {
    local -a cmd=(env DEBIAN_FRONTEND=noninteractive apt-get -q -y
        -o "DPkg::Lock::Timeout=$APT_LOCK_TIMEOUT" "$@")
    if ! is_root; then
        command -v sudo >/dev/null 2>&1 ||
            die "need root to run 'apt-get $*', and sudo is not installed; install the packages by hand"
        cmd=(sudo "${cmd[@]}")
    fi
    local deadline=$((SECONDS + APT_LOCK_TIMEOUT)) out rc announced=""
    while :; do
        out="$(mktemp)"
        rc=0
        "${cmd[@]}" >"$out" 2>&1 || rc=$?
        if [[ $rc -eq 0 ]]; then rm -f "$out"; return 0; fi
        if grep -qiE 'could not get lock|unable to (acquire|lock)' "$out" && ((SECONDS < deadline)); then
            [[ -n "$announced" ]] || log "apt is busy (another apt/dpkg run holds its lock); waiting up to ${APT_LOCK_TIMEOUT}s"
            announced=1
            rm -f "$out"
            sleep 3
            continue
        fi
        die "apt-get $* failed (exit $rc)" "$out"
    done
}

ensure_packages() {
    local -a missing=()
    if [[ -z "${DATABASE_URL:-}" ]] && [[ -z "$(find_pg_bin)" ]]; then missing+=(postgresql); fi
    # nats-server is installed even with an external NATS_URL: tests spawn their own.
    if [[ -z "$(find_nats_bin)" ]]; then missing+=(nats-server); fi
    ((${#missing[@]})) || return 0
    log "installing ${missing[*]} (apt-get)"
    apt_get update
    apt_get install --no-install-recommends "${missing[@]}"
    if [[ " ${missing[*]} " == *" postgresql "* ]] && [[ -z "$(find_pg_bin)" ]]; then
        die "postgresql installed but no /usr/lib/postgresql/*/bin/initdb found"
    fi
    [[ -n "$(find_nats_bin)" ]] || die "nats-server installed but not found on PATH"
}

# ---------------------------------------------------------------- postgres --

# Run a Postgres server binary as the user owning the cluster.
as_pg() {
    if is_root; then
        runuser -u "$PG_OS_USER" -- "$@"
    else
        "$@"
    fi
}

pg_running() {
    local bin
    [[ -f "$PGDATA/PG_VERSION" ]] || return 1
    bin="$(find_pg_bin)" || return 1
    as_pg "$bin/pg_ctl" status -D "$PGDATA" >/dev/null 2>&1
}

pg_pid() { head -n 1 "$PGDATA/postmaster.pid" 2>/dev/null || true; }

# As root the postgres OS user must be able to reach $PG_ROOT.
check_traversable() {
    local dir="" part
    local -a parts
    IFS=/ read -r -a parts <<<"${DATA#/}"
    if ! runuser -u "$PG_OS_USER" -- test -x / 2>/dev/null; then
        die "user '$PG_OS_USER' cannot traverse /"
    fi
    for part in "${parts[@]}"; do
        [[ -n "$part" ]] || continue
        dir="$dir/$part"
        if ! runuser -u "$PG_OS_USER" -- test -x "$dir" 2>/dev/null; then
            die "user '$PG_OS_USER' cannot traverse $dir (mode $(stat -c %A "$dir" 2>/dev/null || echo '?')); \
the Postgres data dir $PG_ROOT must be reachable by it. Use another CHRONICLE_DATA_DIR or run: chmod o+x $dir"
        fi
    done
}

pg_up() {
    local bin
    bin="$(find_pg_bin)" || die "no Postgres binaries found under /usr/lib/postgresql/*/bin"

    if pg_running; then
        log "postgres already running (pid $(pg_pid), port $PG_PORT)"
    else
        mkdir -p "$PG_ROOT"
        if is_root; then
            getent passwd "$PG_OS_USER" >/dev/null ||
                die "OS user '$PG_OS_USER' does not exist (it comes with the postgresql package)"
            chmod o+x "$DATA" 2>/dev/null || true
            check_traversable
            chown -R "$PG_OS_USER:" "$PG_ROOT"
        fi
        as_pg mkdir -p "$PG_SOCK_DIR"
        as_pg chmod 700 "$PG_ROOT"

        local sock_dir="$PG_SOCK_DIR" sock_path="$PG_SOCK_DIR/.s.PGSQL.$PG_PORT"
        if ((${#sock_path} > 100)); then
            die "unix socket path $sock_path is too long for Postgres (max ~100 chars); use a shorter CHRONICLE_DATA_DIR"
        fi

        if [[ ! -f "$PGDATA/PG_VERSION" ]]; then
            log "initdb $PGDATA ($("$bin/postgres" --version | awk '{print $3}'))"
            as_pg "$bin/initdb" -D "$PGDATA" --auth=trust -U postgres --encoding=UTF8 --no-locale \
                >"$PG_ROOT/initdb.log" 2>&1 ||
                die "initdb failed" "$PG_ROOT/initdb.log"
        fi

        log "starting postgres on 127.0.0.1:$PG_PORT (log $PG_LOG)"
        (
            close_extra_fds
            as_pg "$bin/pg_ctl" start -w -t 60 -D "$PGDATA" -l "$PG_LOG" \
                -o "-p $PG_PORT -k '$sock_dir' -c listen_addresses=127.0.0.1 -c max_connections=400 -c shared_buffers=256MB -c fsync=$PG_FSYNC"
        ) >/dev/null 2>"$PG_ROOT/pg_ctl.err" || {
            cat "$PG_ROOT/pg_ctl.err" >&2 || true
            die "postgres failed to start (is port $PG_PORT taken?)" "$PG_LOG"
        }
    fi

    local psql="$bin/psql" exists
    [[ -x "$psql" ]] || psql="$(command -v psql)" || die "psql not found"
    exists="$(PGCONNECT_TIMEOUT=5 "$psql" -X -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -tAq \
        -c "select 1 from pg_database where datname = '$PG_DB'" 2>&1)" ||
        die "cannot query postgres on 127.0.0.1:$PG_PORT: $exists" "$PG_LOG"
    if [[ "$exists" != "1" ]]; then
        log "creating database $PG_DB"
        "$psql" -X -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -q -v ON_ERROR_STOP=1 \
            -c "create database $PG_DB" >/dev/null 2>&1 ||
            [[ "$("$psql" -X -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -tAq \
                -c "select 1 from pg_database where datname = '$PG_DB'")" == "1" ]] ||
            die "could not create database $PG_DB" "$PG_LOG"
    fi
}

pg_down() {
    local bin
    if ! pg_running; then
        log "postgres not running"
        return 0
    fi
    bin="$(find_pg_bin)"
    log "stopping postgres (pid $(pg_pid))"
    as_pg "$bin/pg_ctl" stop -D "$PGDATA" -m fast -w -t 60 >/dev/null ||
        die "pg_ctl stop failed" "$PG_LOG"
}

# -------------------------------------------------------------------- nats --

nats_pid() {
    local pid
    [[ -r "$NATS_PID_FILE" ]] || return 1
    pid="$(tr -dc '0-9' <"$NATS_PID_FILE")"
    [[ -n "$pid" ]] || return 1
    kill -0 "$pid" 2>/dev/null || [[ -d "/proc/$pid" ]] || return 1
    # Guard against a recycled pid.
    if [[ -r "/proc/$pid/comm" ]] && [[ "$(cat "/proc/$pid/comm")" != nats-server* ]]; then
        return 1
    fi
    printf '%s\n' "$pid"
}

# One health probe: JetStream-enabled healthz on the monitor port.
nats_healthy() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsS --max-time 2 \
            "http://127.0.0.1:$NATS_MONITOR_PORT/healthz?js-enabled-only=true" 2>/dev/null |
            grep -q '"ok"'
    else
        # No curl: speak to the client port (the server greets with INFO) and,
        # for the JetStream check, send the healthz request by hand.
        local line resp
        (
            exec 2>/dev/null
            exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT" || exit 1
            IFS= read -r -t 2 line <&3 || exit 1
            [[ "$line" == INFO* ]] || exit 1
        ) || return 1
        resp="$(
            exec 2>/dev/null
            exec 3<>"/dev/tcp/127.0.0.1/$NATS_MONITOR_PORT" || exit 1
            printf 'GET /healthz?js-enabled-only=true HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
            timeout 2 cat <&3 || true
        )" || return 1
        [[ "$resp" == *'"ok"'* ]]
    fi
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_in_use() {
    (exec 2>/dev/null; exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

nats_wait_ready() {
    local deadline=$((SECONDS + NATS_READY_TIMEOUT)) pid="${1:-}"
    until nats_healthy; do
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
            die "nats-server exited during startup (ports $NATS_PORT/$NATS_MONITOR_PORT taken?)" "$NATS_LOG"
        fi
        ((SECONDS < deadline)) ||
            die "nats-server not healthy on http://127.0.0.1:$NATS_MONITOR_PORT/healthz after ${NATS_READY_TIMEOUT}s" "$NATS_LOG"
        sleep 0.1
    done
}

nats_up() {
    local bin pid
    bin="$(find_nats_bin)"
    [[ -n "$bin" ]] || die "nats-server not found"

    if pid="$(nats_pid)"; then
        nats_wait_ready "$pid"
        log "nats already running (pid $pid, port $NATS_PORT)"
        return 0
    fi

    local port
    for port in "$NATS_PORT" "$NATS_MONITOR_PORT"; do
        if port_in_use "$port"; then
            die "port $port is already in use by another process (not the nats-server of $DATA); \
stop it or set CHRONICLE_NATS_PORT / CHRONICLE_NATS_MONITOR_PORT"
        fi
    done
    mkdir -p "$NATS_STORE"
    rm -f "$NATS_PID_FILE"
    log "starting nats-server with JetStream on 127.0.0.1:$NATS_PORT (monitor $NATS_MONITOR_PORT, log $NATS_LOG)"
    # shellcheck disable=SC2094  # -l and the redirect both append to the same log
    (
        close_extra_fds
        exec setsid nohup "$bin" -js -sd "$NATS_STORE" -a 127.0.0.1 -p "$NATS_PORT" \
            -m "$NATS_MONITOR_PORT" -P "$NATS_PID_FILE" -l "$NATS_LOG"
    ) </dev/null >>"$NATS_LOG" 2>&1 &
    pid=$!
    disown "$pid" 2>/dev/null || true
    nats_wait_ready "$pid"
    kill -0 "$pid" 2>/dev/null || die "nats-server exited during startup" "$NATS_LOG"
    log "nats ready (pid $pid)"
}

nats_down() {
    local pid deadline
    if ! pid="$(nats_pid)"; then
        log "nats not running"
        rm -f "$NATS_PID_FILE"
        return 0
    fi
    log "stopping nats-server (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 15))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            warn "nats-server did not exit after SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
            break
        fi
        sleep 0.1
    done
    rm -f "$NATS_PID_FILE"
}

# ---------------------------------------------------------------- commands --

# Serialise concurrent up/down runs on the same data dir (e.g. two `make test`).
# The servers started afterwards get fd 9 closed so they do not keep holding the lock.
take_lock() {
    command -v flock >/dev/null 2>&1 || return 0
    mkdir -p "$DATA"
    exec 9>>"$DATA/.dev-services.lock"
    if ! flock -n 9; then
        log "waiting for another dev-services run on $DATA"
        flock -w 600 9 || die "timed out waiting for the lock on $DATA/.dev-services.lock"
    fi
}

cmd_up() {
    ensure_packages
    take_lock
    if [[ -n "${DATABASE_URL:-}" ]]; then
        log "DATABASE_URL is set: using the external Postgres"
    else
        pg_up
    fi
    if [[ -n "${NATS_URL:-}" ]]; then
        log "NATS_URL is set: using the external NATS"
    else
        nats_up
    fi
    log "up (data dir $DATA)"
}

cmd_down() {
    take_lock
    pg_down
    nats_down
}

cmd_status() {
    local pid
    if [[ -n "${DATABASE_URL:-}" ]]; then
        echo "postgres: external (DATABASE_URL is set)"
    elif pg_running; then
        echo "postgres: running (pid $(pg_pid), 127.0.0.1:$PG_PORT, data $PGDATA)"
    else
        echo "postgres: stopped"
    fi
    if [[ -n "${NATS_URL:-}" ]]; then
        echo "nats:     external (NATS_URL is set)"
    elif pid="$(nats_pid)"; then
        if nats_healthy; then
            echo "nats:     running (pid $pid, 127.0.0.1:$NATS_PORT, monitor $NATS_MONITOR_PORT, JetStream ok)"
        else
            echo "nats:     running but not healthy (pid $pid, see $NATS_LOG)"
        fi
    else
        echo "nats:     stopped"
    fi
}

cmd_env() {
    printf 'export DATABASE_URL=%q\n' "${DATABASE_URL:-postgres://postgres@127.0.0.1:$PG_PORT/$PG_DB}"
    printf 'export NATS_URL=%q\n' "${NATS_URL:-nats://127.0.0.1:$NATS_PORT}"
}

usage() {
    cat <<EOF
usage: $(basename "$0") up|down|status|env

  up      install missing packages (postgresql, nats-server) and start both services
  down    stop both services
  status  show whether each service runs
  env     print export lines, use as: eval "\$($(basename "$0") env)"

data dir: $DATA (CHRONICLE_DATA_DIR)
EOF
}

main() {
    case "${1:-}" in
    up) cmd_up ;;
    down | stop) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
    esac
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
