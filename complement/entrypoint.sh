#!/bin/sh
# Starts Weft as Complement expects: named SERVER_NAME, its federation certificate signed by
# the CA Complement mounts at /complement/ca, a fresh SQLite database in the container.
set -eu

: "${SERVER_NAME:=localhost}"
CA_DIR=/complement/ca
DATA=/data
mkdir -p "$DATA/tls"
cd "$DATA/tls"

# The server's key and a certificate for its name, signed by Complement's CA, so that the
# other homeservers of the test (which trust that CA) accept Weft's federation listener.
openssl req -new -newkey rsa:2048 -nodes -keyout server.key -subj "/CN=$SERVER_NAME" -out server.csr 2>/dev/null
case "$SERVER_NAME" in
    *[!0-9.]*) SAN="DNS:$SERVER_NAME" ;;
    *) SAN="IP:$SERVER_NAME" ;;
esac
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$SAN" > ext.cnf
openssl x509 -req -in server.csr -CA "$CA_DIR/ca.crt" -CAkey "$CA_DIR/ca.key" -CAcreateserial \
    -days 2 -sha256 -extfile ext.cnf -out server.crt 2>/dev/null

sed "s/__SERVER_NAME__/$SERVER_NAME/g" /conf/weft.toml > "$DATA/weft.toml"
exec weft serve --config "$DATA/weft.toml"
