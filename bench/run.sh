#!/usr/bin/env bash
# Side-by-side benchmark of Weft and Synapse on one machine (loopback only).
#
#   bench/run.sh [--db sqlite|postgres] [--quick] [-- extra weft-bench run args]
#   bench/run.sh --two-processes [...]   # Weft only: bench/two_processes.sh [...]
#
# Installs Synapse into a virtualenv ($HOME/.cache/weft-bench-venv) if missing, then runs every
# weft-bench scenario with the same parameters against Weft and then Synapse, each alone on
# the machine with a fresh database and rate limits off, and prints a comparison table. See
# bench/README.md.
set -euo pipefail

DB=sqlite
QUICK=()
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --db) DB="$2"; shift 2 ;;
        --db=*) DB="${1#--db=}"; shift ;;
        --quick) QUICK=(--quick); shift ;;
        --two-processes) shift; exec "$(dirname "$0")/two_processes.sh" "$@" ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
case "$DB" in sqlite|postgres) ;; *) echo "--db must be sqlite or postgres" >&2; exit 2 ;; esac

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weft-target}"
VENV="${WEFT_BENCH_VENV:-$HOME/.cache/weft-bench-venv}"
SECRET="bench-secret-$RANDOM$RANDOM"
WORK="$(mktemp -d /tmp/weft-bench.XXXXXX)"
RESULTS="${WEFT_BENCH_RESULTS:-$HOME/.cache/weft-bench-results}/$(date -u +%Y%m%dT%H%M%SZ)-$DB${QUICK:+-quick}"
mkdir -p "$RESULTS"
SYN_PID=""
WEFT_PID=""
SYN_DB=weft_bench_synapse
WEFT_DB=weft_bench_weft

cleanup() {
    stop_pid "$WEFT_PID" weft
    stop_pid "$SYN_PID" synapse
    if [ "$DB" = postgres ]; then
        psql_admin "DROP DATABASE IF EXISTS $SYN_DB WITH (FORCE)" || true
        psql_admin "DROP DATABASE IF EXISTS $WEFT_DB WITH (FORCE)" || true
    fi
    # Keep the server logs with the results; drop the databases and the rest.
    cp "$WORK"/synapse/homeserver.log "$RESULTS/synapse.log" 2>/dev/null || true
    cp "$WORK"/weft/weft.log "$RESULTS/weft.log" 2>/dev/null || true
    cp "$WORK"/synapse/stderr.log "$RESULTS/synapse.stderr.log" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Synapse install (once), and the release builds -------------------------------------------
install_synapse
build_release

# --- Fresh databases ---------------------------------------------------------------------------
mkdir -p "$WORK/synapse/data" "$WORK/weft"
if [ "$DB" = postgres ]; then
    for d in "$SYN_DB" "$WEFT_DB"; do psql_admin "DROP DATABASE IF EXISTS $d WITH (FORCE)"; done
    psql_admin "CREATE DATABASE $SYN_DB LC_COLLATE='C' LC_CTYPE='C' ENCODING 'UTF8' TEMPLATE template0"
    psql_admin "CREATE DATABASE $WEFT_DB"
    SYN_DB_ARG="$SYN_DB"
    WEFT_DB_URL="$PG_URL_BASE/$WEFT_DB"
else
    SYN_DB_ARG="$WORK/synapse/data/homeserver.db"
    WEFT_DB_URL="sqlite://$WORK/weft/weft.db"
fi

# --- Synapse -----------------------------------------------------------------------------------
SYN_PORT="$(free_port)"
log "generating Synapse config in $WORK/synapse"
(cd "$WORK/synapse" && "$VENV/bin/python" -m synapse.app.homeserver \
    --server-name synapse.bench \
    --config-path "$WORK/synapse/homeserver.yaml" \
    --data-directory "$WORK/synapse/data" \
    --generate-config --report-stats=no >/dev/null)
"$VENV/bin/python" "$ROOT/bench/synapse_config.py" "$WORK/synapse/homeserver.yaml" "$SYN_PORT" "$SECRET" "$DB" "$SYN_DB_ARG"
# Started once Weft is done: each server runs alone on the machine, so neither one's
# background work lands on the other's figures.
SYN_PID=""
start_synapse() {
    log "starting Synapse on 127.0.0.1:$SYN_PORT ($DB)"
    (cd "$WORK/synapse" && exec "$VENV/bin/python" -m synapse.app.homeserver -c "$WORK/synapse/homeserver.yaml" \
        >"$WORK/synapse/stderr.log" 2>&1) &
    SYN_PID=$!
}

# --- Weft --------------------------------------------------------------------------------------
WEFT_PORT="$(free_port)"
write_weft_config "$WORK/weft/weft.toml" "$WORK/weft" "$WEFT_PORT" "$WEFT_DB_URL" "$SECRET"
log "starting Weft on 127.0.0.1:$WEFT_PORT ($DB)"
(cd "$WORK/weft" && exec env ${UNSET_WEFT[@]+"${UNSET_WEFT[@]}"} "$WEFT_BIN" serve --config "$WORK/weft/weft.toml" >"$WORK/weft/weft.log" 2>&1) &
WEFT_PID=$!

wait_up weft "$WEFT_PORT" "$WEFT_PID" "$WORK/weft/weft.log"

# --- Scenarios ---------------------------------------------------------------------------------
run_one() {
    local name="$1" port="$2" pid="$3"
    log "running scenarios against $name"
    BENCH_SHARED_SECRET="$SECRET" "$BENCH_BIN" run --base "http://127.0.0.1:$port" --server "$name" --pid "$pid" \
        ${QUICK[@]+"${QUICK[@]}"} ${EXTRA[@]+"${EXTRA[@]}"} | tee "$RESULTS/$name.jsonl"
}
run_one weft "$WEFT_PORT" "$WEFT_PID"
stop_pid "$WEFT_PID" weft; WEFT_PID=""

start_synapse
wait_up synapse "$SYN_PORT" "$SYN_PID" "$WORK/synapse/stderr.log" "$WORK/synapse/homeserver.log"
run_one synapse "$SYN_PORT" "$SYN_PID"
stop_pid "$SYN_PID" synapse; SYN_PID=""

# --- Table -------------------------------------------------------------------------------------
{
    echo "Weft ($(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')) vs Synapse $SYN_VERSION, database $DB${QUICK:+, quick}"
    echo
    "$BENCH_BIN" compare "$RESULTS/weft.jsonl" "$RESULTS/synapse.jsonl"
} | tee "$RESULTS/table.md"
log "results in $RESULTS"
