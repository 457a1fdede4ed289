#!/usr/bin/env bash
# Federation side by side: two Weft servers federating, then two Synapse servers (loopback).
#
#   bench/federation.sh [--db sqlite|postgres] [--quick] [--only weft|synapse] [-- extra weft-bench federation args]
#
# Makes a throwaway CA and a certificate for 127.0.0.1 (openssl), starts two Weft servers, each
# with a TLS federation listener and server name 127.0.0.1:PORT, trusting the CA; runs
# `weft-bench federation` (user A on server 1 makes a public room, user B on server 2 joins it
# and long-polls /sync: delay from each send to its arrival on the other server, then the
# inbound throughput of one busy room); stops them; does the same with two Synapse servers; and
# prints a table with the Weft/Synapse ratios. See bench/README.md.
set -euo pipefail

DB=sqlite
QUICK=()
ONLY=""
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --db) DB="$2"; shift 2 ;;
        --db=*) DB="${1#--db=}"; shift ;;
        --quick) QUICK=(--quick); shift ;;
        --only) ONLY="$2"; shift 2 ;;
        --only=*) ONLY="${1#--only=}"; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
case "$DB" in sqlite|postgres) ;; *) echo "--db must be sqlite or postgres" >&2; exit 2 ;; esac
case "$ONLY" in ""|weft|synapse) ;; *) echo "--only must be weft or synapse" >&2; exit 2 ;; esac

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weft-target}"
VENV="${WEFT_BENCH_VENV:-$HOME/.cache/weft-bench-venv}"
SECRET="bench-secret-$RANDOM$RANDOM"
WORK="$(mktemp -d /tmp/weft-bench-fed.XXXXXX)"
RESULTS="${WEFT_BENCH_RESULTS:-$HOME/.cache/weft-bench-results}/$(date -u +%Y%m%dT%H%M%SZ)-federation-$DB${QUICK:+-quick}"
mkdir -p "$RESULTS"
# PIDs of the servers this script started, by name (weft1 weft2 synapse1 synapse2).
declare -A PIDS=()
DBS=(weft_bench_fed_weft1 weft_bench_fed_weft2 weft_bench_fed_synapse1 weft_bench_fed_synapse2)

stop_all() {
    local name
    for name in "${!PIDS[@]}"; do
        stop_pid "${PIDS[$name]}" "$name"
        unset "PIDS[$name]"
    done
}

cleanup() {
    stop_all
    if [ "$DB" = postgres ]; then
        for d in "${DBS[@]}"; do psql_admin "DROP DATABASE IF EXISTS $d WITH (FORCE)" || true; done
    fi
    for n in weft1 weft2 synapse1 synapse2; do
        cp "$WORK/$n/server.log" "$RESULTS/$n.log" 2>/dev/null || true
        cp "$WORK/$n/homeserver.log" "$RESULTS/$n.homeserver.log" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Synapse install (once), and the release builds -------------------------------------------
[ "$ONLY" != weft ] && install_synapse
build_release

# shellcheck source=bench/fed_lib.sh
. "$ROOT/bench/fed_lib.sh"
make_ca

# Client port and federation port of each server.
declare -A CPORT=() FPORT=()
for n in weft1 weft2 synapse1 synapse2; do
    CPORT[$n]="$(free_port)"
    FPORT[$n]="$(free_port)"
done

# run_pair KIND: starts KIND1 and KIND2, waits for both listeners, runs the scenarios, stops both.
run_pair() {
    local kind="$1" a="${1}1" b="${1}2"
    "start_$kind" "$a"
    "start_$kind" "$b"
    for n in "$a" "$b"; do
        wait_up "$n" "${CPORT[$n]}" "${PIDS[$n]}" "$WORK/$n/server.log" "$WORK/$n/homeserver.log"
        wait_federation "$n" "${FPORT[$n]}" "${PIDS[$n]}" "$WORK/$n/server.log" "$WORK/$n/homeserver.log"
    done
    log "running the federation scenarios: $a (127.0.0.1:${FPORT[$a]}) -> $b (127.0.0.1:${FPORT[$b]})"
    local load_before load_after
    load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
    BENCH_SHARED_SECRET="$SECRET" "$BENCH_BIN" federation --server "$kind" \
        --base "http://127.0.0.1:${CPORT[$a]}" --second-base "http://127.0.0.1:${CPORT[$b]}" \
        --via "127.0.0.1:${FPORT[$a]}" \
        ${QUICK[@]+"${QUICK[@]}"} ${EXTRA[@]+"${EXTRA[@]}"} | tee "$RESULTS/$kind.jsonl"
    load_after="$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "$kind: load average $load_before before, $load_after after" >>"$RESULTS/load.txt"
    for n in "$b" "$a"; do
        stop_pid "${PIDS[$n]}" "$n"
        unset "PIDS[$n]"
    done
}

# Each pair runs alone on the machine: Weft's pair first, then Synapse's.
[ "$ONLY" = synapse ] || run_pair weft
[ "$ONLY" = weft ] || run_pair synapse

# --- Table -------------------------------------------------------------------------------------
{
    echo "Federation: Weft ($(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')) pair vs Synapse ${SYN_VERSION:-(not run)} pair, database $DB${QUICK:+, quick}"
    echo "Machine: nproc $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(tr '\n' ';' <"$RESULTS/load.txt")"
    echo
    if [ -z "$ONLY" ]; then
        "$BENCH_BIN" compare "$RESULTS/weft.jsonl" "$RESULTS/synapse.jsonl"
    else
        "$BENCH_BIN" table "$RESULTS/$ONLY.jsonl"
    fi
} | tee "$RESULTS/table.md"
log "results in $RESULTS"
