# Shell helpers shared by bench/run.sh and bench/two_processes.sh (sourced, not run).

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

# wait_up NAME PORT PID LOG...: waits for /_matrix/client/versions; on failure shows the logs.
wait_up() {
    local name="$1" port="$2" pid="$3"
    shift 3
    for _ in $(seq 1 300); do
        if curl -fsS "http://127.0.0.1:$port/_matrix/client/versions" >/dev/null 2>&1; then
            log "$name is up"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$name exited during start-up; its logs:" >&2
            tail -n 40 "$@" >&2 2>/dev/null || true
            return 1
        fi
        sleep 0.5
    done
    echo "$name did not answer /_matrix/client/versions within 150 s" >&2
    return 1
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
