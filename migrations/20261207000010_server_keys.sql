-- Other servers' signing keys, as fetched from them or a notary and verified against their
-- self-signature. A key signs requests until valid_until_ts; an old key (expired_ts set) still
-- verifies events sent before it expired.
CREATE TABLE server_signing_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    expired_ts BIGINT,
    fetched_ts BIGINT NOT NULL,
    -- The key server answer that vouched for it, as received (signed), so that this server
    -- can serve it again as a notary.
    key_json TEXT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);
