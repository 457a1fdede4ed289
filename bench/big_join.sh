#!/usr/bin/env bash
# A federated join into a big room, Weft joining and Synapse joining the same room (loopback).
#
#   bench/big_join.sh [--db sqlite|postgres] [--host synapse|weft] [--members 100,1000] [--with-10k]
#                     [--joiners weft,synapse]
#
# Starts the host (one server of the --host kind) and grows one room on it through its client
# API (members registered with the shared secret, each joining: real signed joins), to each N
# of --members in turn. At each N, a fresh server of each joining kind starts, a user on it
# joins the room by ID through the host, and `weft-bench big-join join` records the join's time
# and the joining process's peak RSS (VmHWM); the joiner is stopped before the next starts.
# Prints a table with the Weft/Synapse ratios per N. See bench/README.md.
set -euo pipefail

DB=sqlite
HOST_KIND=synapse
MEMBERS="100,1000"
JOINERS="weft,synapse"
while [ $# -gt 0 ]; do
    case "$1" in
        --db) DB="$2"; shift 2 ;;
        --db=*) DB="${1#--db=}"; shift ;;
        --host) HOST_KIND="$2"; shift 2 ;;
        --host=*) HOST_KIND="${1#--host=}"; shift ;;
        --members) MEMBERS="$2"; shift 2 ;;
        --members=*) MEMBERS="${1#--members=}"; shift ;;
        --with-10k) MEMBERS="$MEMBERS,10000"; shift ;;
        --joiners) JOINERS="$2"; shift 2 ;;
        --joiners=*) JOINERS="${1#--joiners=}"; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
case "$DB" in sqlite|postgres) ;; *) echo "--db must be sqlite or postgres" >&2; exit 2 ;; esac
case "$HOST_KIND" in weft|synapse) ;; *) echo "--host must be weft or synapse" >&2; exit 2 ;; esac

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weft-target}"
VENV="${WEFT_BENCH_VENV:-$HOME/.cache/weft-bench-venv}"
SECRET="bench-secret-$RANDOM$RANDOM"
WORK="$(mktemp -d /tmp/weft-bench-bigjoin.XXXXXX)"
RESULTS="${WEFT_BENCH_RESULTS:-$HOME/.cache/weft-bench-results}/$(date -u +%Y%m%dT%H%M%SZ)-big-join-$HOST_KIND-host-$DB"
mkdir -p "$RESULTS"
declare -A PIDS=() CPORT=() FPORT=()
STARTED=()

stop_all() {
    local name
    for name in "${!PIDS[@]}"; do
        stop_pid "${PIDS[$name]}" "$name"
        unset "PIDS[$name]"
    done
}

cleanup() {
    stop_all
    for n in ${STARTED[@]+"${STARTED[@]}"}; do
        [ "$DB" = postgres ] && { psql_admin "DROP DATABASE IF EXISTS weft_bench_fed_$n WITH (FORCE)" || true; }
        cp "$WORK/$n/server.log" "$RESULTS/$n.log" 2>/dev/null || true
        cp "$WORK/$n/homeserver.log" "$RESULTS/$n.homeserver.log" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

install_synapse
build_release
# shellcheck source=bench/fed_lib.sh
. "$ROOT/bench/fed_lib.sh"
make_ca

# up NAME KIND: starts a server of KIND named NAME and waits for both its listeners.
up() {
    local n="$1" kind="$2"
    STARTED+=("$n")
    "start_$kind" "$n"
    wait_up "$n" "${CPORT[$n]}" "${PIDS[$n]}" "$WORK/$n/server.log" "$WORK/$n/homeserver.log"
    wait_federation "$n" "${FPORT[$n]}" "${PIDS[$n]}" "$WORK/$n/server.log" "$WORK/$n/homeserver.log"
}

down() {
    stop_pid "${PIDS[$1]}" "$1"
    unset "PIDS[$1]"
}

up host "$HOST_KIND"
for n in ${MEMBERS//,/ }; do
    log "growing the room on the $HOST_KIND host to $n members"
    BENCH_SHARED_SECRET="$SECRET" "$BENCH_BIN" big-join grow --base "http://127.0.0.1:${CPORT[host]}" \
        --members "$n" --state "$WORK/room.json"
    for kind in ${JOINERS//,/ }; do
        name="${kind}join$n"
        up "$name" "$kind"
        log "$kind joins the $n-member room"
        BENCH_SHARED_SECRET="$SECRET" "$BENCH_BIN" big-join join --base "http://127.0.0.1:${CPORT[$name]}" \
            --via "127.0.0.1:${FPORT[host]}" --state "$WORK/room.json" --pid "${PIDS[$name]}" \
            --server "$kind" --host "$HOST_KIND" | tee -a "$RESULTS/$kind.jsonl"
        down "$name"
    done
done
down host

{
    echo "Federated join into a room hosted on $HOST_KIND ($DB): Weft ($(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')) joining vs Synapse ${SYN_VERSION:-} joining"
    echo "Machine: nproc $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo
    if [ -s "$RESULTS/weft.jsonl" ] && [ -s "$RESULTS/synapse.jsonl" ]; then
        "$BENCH_BIN" compare "$RESULTS/weft.jsonl" "$RESULTS/synapse.jsonl"
    else
        for f in "$RESULTS"/*.jsonl; do "$BENCH_BIN" table "$f"; done
    fi
} | tee "$RESULTS/table.md"
log "results in $RESULTS"
