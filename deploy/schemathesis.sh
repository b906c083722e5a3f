#!/usr/bin/env bash
# Schemathesis, the OpenAPI contract tester that tests/contract.rs runs, in a
# virtualenv of its own (pinned version; nothing installed system-wide but
# Debian's python3-venv when it is missing).
#
#   deploy/schemathesis.sh install   create/refresh the venv; prints the `st` path
#   deploy/schemathesis.sh path      print the `st` path (fails if not installed)
#
# Environment:
#   CHRONICLE_DATA_DIR   state directory (default ./.data); the venv is its schemathesis/
set -euo pipefail

VERSION="4.32.5"
DATA="${CHRONICLE_DATA_DIR:-./.data}"
case "$DATA" in /*) ;; *) DATA="$PWD/${DATA#./}" ;; esac
VENV="$DATA/schemathesis"
ST="$VENV/bin/st"

log() { printf 'schemathesis.sh: %s\n' "$*" >&2; }
die() { printf 'schemathesis.sh: error: %s\n' "$*" >&2; exit 1; }

installed_version() { "$ST" --version 2>/dev/null | awk '{print $NF}'; }

ensure_python_venv() {
    if command -v python3 >/dev/null 2>&1 && python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then return 0; fi
    log "installing python3-venv (apt-get)"
    local -a cmd=(env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=600)
    if [[ "$(id -u)" -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "need root for apt-get install python3-venv"
        cmd=(sudo "${cmd[@]}")
    fi
    "${cmd[@]}" update >/dev/null
    "${cmd[@]}" install --no-install-recommends python3 python3-venv >/dev/null
}

case "${1:-}" in
install)
    if [[ -x "$ST" && "$(installed_version)" == "$VERSION" ]]; then
        printf '%s\n' "$ST"
        exit 0
    fi
    ensure_python_venv
    log "creating $VENV (schemathesis $VERSION)"
    rm -rf -- "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION" >&2
    [[ "$(installed_version)" == "$VERSION" ]] || die "schemathesis $VERSION did not install"
    printf '%s\n' "$ST"
    ;;
path)
    [[ -x "$ST" ]] || die "not installed: run deploy/schemathesis.sh install"
    printf '%s\n' "$ST"
    ;;
*)
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
