# Shell helpers shared by bench/run.sh, bench/two_processes.sh, bench/federation.sh and
# bench/big_join.sh
# (sourced, not run).

PG_URL_BASE="postgres://postgres@127.0.0.1:5432"

log() { echo "== $*" >&2; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

psql_admin() { psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -v ON_ERROR_STOP=1 -qtAc "$1"; }

# stop_pid PID NAME: TERM, up to 10 s, then KILL.
stop_pid() {
    local pid="$1" name="$2"
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
}

# wait_url NAME URL PID LOG... [-- CURL_ARGS...]: waits (up to 150 s) until URL answers; on
# failure shows the logs.
wait_url() {
    local name="$1" url="$2" pid="$3"
    shift 3
    local logs=() curl_args=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do logs+=("$1"); shift; done
    [ "${1:-}" = -- ] && shift && curl_args=("$@")
    for _ in $(seq 1 300); do
        if curl -fsS "${curl_args[@]}" "$url" >/dev/null 2>&1; then
            log "$name is up"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$name exited during start-up; its logs:" >&2
            tail -n 40 "${logs[@]}" >&2 2>/dev/null || true
            return 1
        fi
        sleep 0.5
    done
    echo "$name did not answer $url within 150 s" >&2
    return 1
}

# wait_up NAME PORT PID LOG...: waits for /_matrix/client/versions; on failure shows the logs.
wait_up() {
    local name="$1" port="$2" pid="$3"
    shift 3
    wait_url "$name" "http://127.0.0.1:$port/_matrix/client/versions" "$pid" "$@"
}

# install_synapse: matrix-synapse (with psycopg2) in $VENV unless there; sets SYN_VERSION.
install_synapse() {
    if ! "$VENV/bin/python" -c 'import synapse, psycopg2' 2>/dev/null; then
        log "installing matrix-synapse into $VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --upgrade pip
        "$VENV/bin/pip" install --quiet matrix-synapse psycopg2-binary
    fi
    SYN_VERSION="$("$VENV/bin/python" -c 'import synapse; print(synapse.__version__)')"
    log "Synapse $SYN_VERSION"
}

# build_release: the release weft and weft-bench; sets WEFT_BIN and BENCH_BIN. With
# WEFT_BENCH_BIN_DIR set, its weft and weft-bench are used as they are (a build kept aside,
# while the shared target directory builds something else).
build_release() {
    if [ -n "${WEFT_BENCH_BIN_DIR:-}" ]; then
        WEFT_BIN="$WEFT_BENCH_BIN_DIR/weft"
        BENCH_BIN="$WEFT_BENCH_BIN_DIR/weft-bench"
        log "using $WEFT_BIN and $BENCH_BIN as built"
        return
    fi
    log "building weft and weft-bench (release)"
    (cd "$ROOT" && cargo build --release -p weft -p weft-bench)
    WEFT_BIN="$CARGO_TARGET_DIR/release/weft"
    BENCH_BIN="$CARGO_TARGET_DIR/release/weft-bench"
}

# write_weft_config FILE DIR PORT DB_URL SECRET: the benchmark's Weft config (shared secret,
# rate limits and federation off, everything else default), data under DIR.
write_weft_config() {
    local file="$1" dir="$2" port="$3" db_url="$4" secret="$5"
    cat >"$file" <<CONF
server_name = "weft.bench"
public_baseurl = "http://127.0.0.1:$port/"
signing_key_path = "$dir/signing.key"

[database]
url = "$db_url"

[[listeners]]
address = "127.0.0.1"
port = $port
apis = ["client", "media", "admin"]

[registration]
enabled = false
shared_secret = "$secret"

[rate_limits]
enabled = false

[media]
path = "$dir/media"

[federation]
enabled = false
CONF
}

# Weft reads every WEFT_* variable as configuration: `env "${UNSET_WEFT[@]}" weft ...` starts
# it without any from this shell.
UNSET_WEFT=()
for v in $(compgen -e | grep '^WEFT_' || true); do UNSET_WEFT+=(-u "$v"); done
