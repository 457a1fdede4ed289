#!/usr/bin/env bash
# TURN relays side by side: Weft's built-in relay, then coturn, on loopback.
#
#   bench/turn.sh [--quick] [--only weft|coturn] [-- extra weft-bench turn args]
#
# Starts Weft with [turn] enabled (relay on 127.0.0.1, loopback peers allowed, no bandwidth
# cap, a quota above the load) and runs `weft-bench turn` against it: webrtc-rs's TURN client
# allocates with shared-secret credentials and relays numbered packets to an echo peer and
# back, for 1 allocation and for 100 at once (latency with one packet in flight, throughput
# with 8, RSS per allocation); stops it; does the same with coturn (Debian's package, started
# in the foreground with use-auth-secret and the same secret); and prints a table with the
# Weft/coturn ratios. See bench/README.md.
set -euo pipefail

QUICK=()
ONLY=""
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=(--seconds 2); shift ;;
        --only) ONLY="$2"; shift 2 ;;
        --only=*) ONLY="${1#--only=}"; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
case "$ONLY" in ""|weft|coturn) ;; *) echo "--only must be weft or coturn" >&2; exit 2 ;; esac

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weft-target}"
SECRET="bench-turn-secret-$RANDOM$RANDOM"
REALM="weft.bench"
WORK="$(mktemp -d /tmp/weft-bench-turn.XXXXXX)"
RESULTS="${WEFT_BENCH_RESULTS:-$HOME/.cache/weft-bench-results}/$(date -u +%Y%m%dT%H%M%SZ)-turn${QUICK:+-quick}"
mkdir -p "$RESULTS"
declare -A PIDS=()

cleanup() {
    local name
    for name in "${!PIDS[@]}"; do stop_pid "${PIDS[$name]}" "$name"; done
    cp "$WORK/weft/server.log" "$RESULTS/weft.log" 2>/dev/null || true
    cp "$WORK/coturn/turnserver.log" "$RESULTS/coturn.log" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$ONLY" != weft ] && ! command -v turnserver >/dev/null; then
    log "installing coturn (Debian package; its service stays disabled)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq coturn
fi
[ "$ONLY" != weft ] && COTURN_VERSION="$(dpkg-query -W -f='${Version}' coturn 2>/dev/null || echo '?')"
build_release

# Credentials in the shared-secret scheme (as /voip/turnServer makes them), valid for a day.
USERNAME="$(($(date +%s) + 86400)):@bench:$REALM"
PASSWORD="$(printf '%s' "$USERNAME" | openssl dgst -binary -sha1 -hmac "$SECRET" | base64)"

# wait_relay NAME PORT PID: the relay's TCP listener (same port) accepts connections.
wait_relay() {
    local name="$1" port="$2" pid="$3"
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            log "$name is up"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { echo "$name exited during start-up" >&2; return 1; }
        sleep 0.1
    done
    echo "$name did not listen on $port" >&2
    return 1
}

# run_bench NAME PORT PID
run_bench() {
    local name="$1" port="$2" pid="$3" load_before load_after
    log "running weft-bench turn against $name (127.0.0.1:$port)"
    load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
    "$BENCH_BIN" turn --server "$name" --relay "127.0.0.1:$port" --username "$USERNAME" \
        --password "$PASSWORD" --realm "$REALM" --pid "$pid" \
        ${QUICK[@]+"${QUICK[@]}"} ${EXTRA[@]+"${EXTRA[@]}"} | tee "$RESULTS/$name.jsonl"
    load_after="$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "$name: load average $load_before before, $load_after after" >>"$RESULTS/load.txt"
}

run_weft() {
    local dir="$WORK/weft" http_port turn_port
    mkdir -p "$dir"
    http_port="$(free_port)"
    turn_port="$(free_port)"
    write_weft_config "$dir/weft.toml" "$dir" "$http_port" "sqlite://$dir/weft.db" "$SECRET"
    cat >>"$dir/weft.toml" <<CONF

[voip]
turn_shared_secret = "$SECRET"

[turn]
enabled = true
udp_listeners = ["127.0.0.1:$turn_port"]
tcp_listeners = ["127.0.0.1:$turn_port"]
realm = "$REALM"
relay_ip = "127.0.0.1"
min_port = 40000
max_port = 40999
user_quota = 1000
max_bytes_per_second = 0
allow_loopback_peers = true
CONF
    log "starting weft: client 127.0.0.1:$http_port, TURN 127.0.0.1:$turn_port"
    (cd "$dir" && exec env ${UNSET_WEFT[@]+"${UNSET_WEFT[@]}"} "$WEFT_BIN" serve --config "$dir/weft.toml" >"$dir/server.log" 2>&1) &
    PIDS[weft]=$!
    wait_up weft "$http_port" "${PIDS[weft]}" "$dir/server.log"
    wait_relay "weft's relay" "$turn_port" "${PIDS[weft]}"
    run_bench weft "$turn_port" "${PIDS[weft]}"
    stop_pid "${PIDS[weft]}" weft
    unset "PIDS[weft]"
}

run_coturn() {
    local dir="$WORK/coturn" port
    mkdir -p "$dir"
    port="$(free_port)"
    log "starting coturn $COTURN_VERSION on 127.0.0.1:$port"
    turnserver -n --listening-ip=127.0.0.1 --listening-port="$port" --relay-ip=127.0.0.1 \
        --min-port=41000 --max-port=41999 --use-auth-secret --static-auth-secret="$SECRET" \
        --realm="$REALM" --no-tls --no-dtls --allow-loopback-peers --no-cli \
        --pidfile="$dir/turnserver.pid" --db="$dir/turndb" \
        --log-file="$dir/turnserver.log" --simple-log >/dev/null 2>&1 &
    PIDS[coturn]=$!
    wait_relay coturn "$port" "${PIDS[coturn]}"
    run_bench coturn "$port" "${PIDS[coturn]}"
    stop_pid "${PIDS[coturn]}" coturn
    unset "PIDS[coturn]"
}

# Each relay runs alone on the machine: Weft's first, then coturn.
[ "$ONLY" = coturn ] || run_weft
[ "$ONLY" = weft ] || run_coturn

{
    echo "TURN relays: Weft ($(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')) built-in relay vs coturn ${COTURN_VERSION:-(not run)}, loopback${QUICK:+, quick}"
    echo "Machine: nproc $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(tr '\n' ';' <"$RESULTS/load.txt")"
    echo
    if [ -z "$ONLY" ]; then
        "$BENCH_BIN" compare "$RESULTS/weft.jsonl" "$RESULTS/coturn.jsonl"
    else
        "$BENCH_BIN" table "$RESULTS/$ONLY.jsonl"
    fi
} | tee "$RESULTS/table.md"
log "results in $RESULTS"
