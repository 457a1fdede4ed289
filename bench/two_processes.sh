#!/usr/bin/env bash
# Two Weft processes serving one server name from one PostgreSQL database (loopback only).
#
#   bench/two_processes.sh [--quick] [-- extra weft-bench run args]
#   (also: bench/run.sh --two-processes [...])
#
# Builds release, makes a fresh PostgreSQL database (127.0.0.1:5432, user postgres, trust),
# writes one Weft config, starts process A, waits until it answers (it runs the migrations),
# then starts process B with the same config, database and signing key on a second port; runs
# weft-bench's two_process_fanout and two_process_send scenarios across both, stops both and
# prints a table. Weft only. See bench/README.md.
set -euo pipefail

QUICK=()
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=(--quick); shift ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weft-target}"
SECRET="bench-secret-$RANDOM$RANDOM"
WORK="$(mktemp -d /tmp/weft-bench-2p.XXXXXX)"
RESULTS="${WEFT_BENCH_RESULTS:-$HOME/.cache/weft-bench-results}/$(date -u +%Y%m%dT%H%M%SZ)-two-processes${QUICK:+-quick}"
mkdir -p "$RESULTS"
DB_NAME=weft_bench_two_processes
PID_A=""
PID_B=""

cleanup() {
    stop_pid "$PID_B" "weft B"
    stop_pid "$PID_A" "weft A"
    psql_admin "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" || true
    cp "$WORK/weft-a.log" "$RESULTS/weft-a.log" 2>/dev/null || true
    cp "$WORK/weft-b.log" "$RESULTS/weft-b.log" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building weft and weft-bench (release)"
(cd "$ROOT" && cargo build --release -p weft -p weft-bench)
WEFT_BIN="$CARGO_TARGET_DIR/release/weft"
BENCH_BIN="$CARGO_TARGET_DIR/release/weft-bench"

psql_admin "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)"
psql_admin "CREATE DATABASE $DB_NAME"

PORT_A="$(free_port)"
PORT_B="$(free_port)"
while [ "$PORT_B" = "$PORT_A" ]; do PORT_B="$(free_port)"; done
# One config for both: A listens where it says; B is the same but for its listener (and the
# base URL it advertises), given as WEFT_* overrides.
write_weft_config "$WORK/weft.toml" "$WORK" "$PORT_A" "$PG_URL_BASE/$DB_NAME" "$SECRET"

log "starting weft A on 127.0.0.1:$PORT_A"
(cd "$WORK" && exec env ${UNSET_WEFT[@]+"${UNSET_WEFT[@]}"} "$WEFT_BIN" serve --config "$WORK/weft.toml" >"$WORK/weft-a.log" 2>&1) &
PID_A=$!
# A has run the migrations and written the signing key once it answers.
wait_up "weft A" "$PORT_A" "$PID_A" "$WORK/weft-a.log"

log "starting weft B on 127.0.0.1:$PORT_B (same config, database and key)"
(cd "$WORK" && exec env ${UNSET_WEFT[@]+"${UNSET_WEFT[@]}"} \
    WEFT_LISTENERS="[{address=\"127.0.0.1\",port=$PORT_B,apis=[\"client\",\"media\",\"admin\"]}]" \
    WEFT_PUBLIC_BASEURL="http://127.0.0.1:$PORT_B/" \
    "$WEFT_BIN" serve --config "$WORK/weft.toml" >"$WORK/weft-b.log" 2>&1) &
PID_B=$!
wait_up "weft B" "$PORT_B" "$PID_B" "$WORK/weft-b.log"

log "running the two-process scenarios (A = :$PORT_A, B = :$PORT_B)"
# Other work on the machine shows in the figures: note the load around the run.
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
BENCH_SHARED_SECRET="$SECRET" "$BENCH_BIN" run --server weft \
    --base "http://127.0.0.1:$PORT_A" --second-base "http://127.0.0.1:$PORT_B" \
    --scenarios two_process_fanout,two_process_send \
    ${QUICK[@]+"${QUICK[@]}"} ${EXTRA[@]+"${EXTRA[@]}"} | tee "$RESULTS/weft.jsonl"

LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
stop_pid "$PID_B" "weft B"; PID_B=""
stop_pid "$PID_A" "weft A"; PID_A=""

{
    echo "Weft $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?'), two processes on one PostgreSQL database${QUICK:+, quick}"
    echo "Machine: nproc $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') at $(grep -m1 'cpu MHz' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') MHz; load average $LOAD_BEFORE before the scenarios, $LOAD_AFTER after"
    echo
    "$BENCH_BIN" table "$RESULTS/weft.jsonl"
} | tee "$RESULTS/table.md"
log "results in $RESULTS"
