"""Edits a Synapse config made by `--generate-config` for the benchmark.

usage: synapse_config.py CONFIG PORT SECRET sqlite|postgres DB_PATH_OR_NAME
           [federation=FED_PORT cert=TLS_CRT key=TLS_KEY ca=CA_PEM]

Loopback HTTP listener (client + admin API) without TLS, no federation listener, shared-secret
registration, rate limits out of the way, no stats reporting, no key servers, and a fresh
database. Uses PyYAML, which Synapse itself depends on.

With the optional federation arguments (bench/federation.sh): a second listener on
127.0.0.1:FED_PORT with TLS (federation and key APIs) using TLS_CRT/TLS_KEY, outbound
federation trusting only the CA in CA_PEM (`federation_custom_ca_list`, certificates still
verified), and loopback addresses allowed as federation destinations (`ip_range_blacklist: []`).
"""

import sys

import yaml

path, port, secret, db_kind, db = sys.argv[1:6]
extra = dict(a.split("=", 1) for a in sys.argv[6:])

with open(path) as f:
    cfg = yaml.safe_load(f)

cfg["listeners"] = [
    {
        "port": int(port),
        "bind_addresses": ["127.0.0.1"],
        "type": "http",
        "tls": False,
        "x_forwarded": False,
        "resources": [{"names": ["client"], "compress": False}],
    }
]
if "federation" in extra:
    cfg["listeners"].append(
        {
            "port": int(extra["federation"]),
            "bind_addresses": ["127.0.0.1"],
            "type": "http",
            "tls": True,
            "x_forwarded": False,
            "resources": [{"names": ["federation", "keys"], "compress": False}],
        }
    )
    cfg["tls_certificate_path"] = extra["cert"]
    cfg["tls_private_key_path"] = extra["key"]
    cfg["federation_custom_ca_list"] = [extra["ca"]]
    cfg["federation_verify_certificates"] = True
    # The default blocklist holds 127.0.0.0/8: every server here is on loopback.
    cfg["ip_range_blacklist"] = []
cfg["registration_shared_secret"] = secret
cfg["enable_registration"] = False
cfg["report_stats"] = False
cfg["suppress_key_server_warning"] = True
cfg["trusted_key_servers"] = []
# Registration is setup, not measured: cheaper password hashing keeps setup short.
cfg["bcrypt_rounds"] = 4

# Rate limits effectively off.
big = {"per_second": 100000, "burst_count": 100000}
for key in [
    "rc_message",
    "rc_registration",
    "rc_registration_token_validity",
    "rc_3pid_validation",
    "rc_joins_per_room",
    "rc_admin_redaction",
    "rc_third_party_invite",
    "rc_room_creation",
    "rc_reports",
    "rc_delayed_event_mgmt",
    "rc_media_create",
    "rc_presence",
    "rc_send_email",
]:
    cfg[key] = dict(big)
cfg["rc_presence"] = {"per_user": dict(big)}
cfg["rc_login"] = {"address": dict(big), "account": dict(big), "failed_attempts": dict(big)}
cfg["rc_joins"] = {"local": dict(big), "remote": dict(big)}
cfg["rc_invites"] = {"per_room": dict(big), "per_user": dict(big), "per_issuer": dict(big)}
cfg["rc_federation"] = {"window_size": 1000, "sleep_limit": 100000, "sleep_delay": 1, "reject_limit": 100000, "concurrent": 100000}

if db_kind == "sqlite":
    cfg["database"] = {"name": "sqlite3", "args": {"database": db}}
else:
    cfg["database"] = {
        "name": "psycopg2",
        "args": {
            "user": "postgres",
            "database": db,
            "host": "127.0.0.1",
            "port": 5432,
            "cp_min": 5,
            "cp_max": 10,
        },
    }

with open(path, "w") as f:
    yaml.safe_dump(cfg, f, sort_keys=False)
