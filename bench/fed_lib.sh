# Shell helpers for the benchmarks that run federating servers, bench/federation.sh and
# bench/big_join.sh (sourced after lib.sh, not run). They use the caller's ROOT, WORK, DB,
# SECRET, VENV, WEFT_BIN, and its associative arrays CPORT, FPORT (ports by server name) and
# PIDS (started servers by name).

# make_ca: a throwaway CA and one certificate for 127.0.0.1 (every server here is on it), in
# $WORK/tls; sets CA, CERT and KEY.
make_ca() {
    mkdir -p "$WORK/tls"
    CA="$WORK/tls/ca.pem"
    CERT="$WORK/tls/tls.crt"
    KEY="$WORK/tls/tls.key"
    (
        cd "$WORK/tls"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
            -keyout ca.key -out ca.pem -subj "/CN=weft bench CA" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout tls.key -out tls.csr -subj "/CN=127.0.0.1" 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' >ext.cnf
        openssl x509 -req -in tls.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
            -extfile ext.cnf -out tls.crt 2>/dev/null
    )
    log "CA and certificate for 127.0.0.1 in $WORK/tls"
}

# fresh_db NAME [synapse]: a new PostgreSQL database (Synapse's with C collation).
fresh_db() {
    psql_admin "DROP DATABASE IF EXISTS $1 WITH (FORCE)"
    if [ "${2:-}" = synapse ]; then
        psql_admin "CREATE DATABASE $1 LC_COLLATE='C' LC_CTYPE='C' ENCODING 'UTF8' TEMPLATE template0"
    else
        psql_admin "CREATE DATABASE $1"
    fi
}

# wait_federation NAME FED_PORT PID LOG...: the TLS federation listener answers, its
# certificate checked against the throwaway CA.
wait_federation() {
    local name="$1" port="$2" pid="$3"
    shift 3
    wait_url "$name (federation)" "https://127.0.0.1:$port/_matrix/federation/v1/version" "$pid" "$@" -- --cacert "$CA"
}

# ports_for NAME: a client port and a federation port for NAME, unless it has them.
ports_for() {
    [ -n "${CPORT[$1]:-}" ] || CPORT[$1]="$(free_port)"
    [ -n "${FPORT[$1]:-}" ] || FPORT[$1]="$(free_port)"
}

# start_weft NAME: writes its config (shared secret, rate limits off, federation on over TLS
# with server name 127.0.0.1:FPORT, trusting the CA; everything else default) and starts it.
start_weft() {
    local n="$1" dir="$WORK/$1" db_url
    mkdir -p "$dir"
    ports_for "$n"
    if [ "$DB" = postgres ]; then
        fresh_db "weft_bench_fed_$n"
        db_url="$PG_URL_BASE/weft_bench_fed_$n"
    else
        db_url="sqlite://$dir/weft.db"
    fi
    cat >"$dir/weft.toml" <<CONF
server_name = "127.0.0.1:${FPORT[$n]}"
public_baseurl = "http://127.0.0.1:${CPORT[$n]}/"
signing_key_path = "$dir/signing.key"
extra_ca_file = "$CA"

[database]
url = "$db_url"

[[listeners]]
address = "127.0.0.1"
port = ${CPORT[$n]}
apis = ["client", "media", "admin"]

[[listeners]]
address = "127.0.0.1"
port = ${FPORT[$n]}
apis = ["federation", "keys"]
tls_cert = "$CERT"
tls_key = "$KEY"

[registration]
enabled = false
shared_secret = "$SECRET"

[rate_limits]
enabled = false

[media]
path = "$dir/media"

[federation]
enabled = true
CONF
    log "starting $n: client 127.0.0.1:${CPORT[$n]}, server name 127.0.0.1:${FPORT[$n]} ($DB)"
    (cd "$dir" && exec env ${UNSET_WEFT[@]+"${UNSET_WEFT[@]}"} "$WEFT_BIN" serve --config "$dir/weft.toml" >"$dir/server.log" 2>&1) &
    PIDS[$n]=$!
}

# start_synapse NAME: generates a config, edits it with synapse_config.py (with a TLS
# federation listener, the CA, loopback destinations allowed) and starts it.
start_synapse() {
    local n="$1" dir="$WORK/$1" db_arg
    mkdir -p "$dir/data"
    ports_for "$n"
    if [ "$DB" = postgres ]; then
        fresh_db "weft_bench_fed_$n" synapse
        db_arg="weft_bench_fed_$n"
    else
        db_arg="$dir/data/homeserver.db"
    fi
    (cd "$dir" && "$VENV/bin/python" -m synapse.app.homeserver \
        --server-name "127.0.0.1:${FPORT[$n]}" \
        --config-path "$dir/homeserver.yaml" \
        --data-directory "$dir/data" \
        --generate-config --report-stats=no >/dev/null)
    "$VENV/bin/python" "$ROOT/bench/synapse_config.py" "$dir/homeserver.yaml" "${CPORT[$n]}" "$SECRET" "$DB" "$db_arg" \
        "federation=${FPORT[$n]}" "cert=$CERT" "key=$KEY" "ca=$CA"
    # The generated log config writes homeserver.log in the working directory.
    log "starting $n: client 127.0.0.1:${CPORT[$n]}, server name 127.0.0.1:${FPORT[$n]} ($DB)"
    (cd "$dir" && exec "$VENV/bin/python" -m synapse.app.homeserver -c "$dir/homeserver.yaml" \
        >"$dir/server.log" 2>&1) &
    PIDS[$n]=$!
}

