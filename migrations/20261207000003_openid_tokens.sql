-- OpenID tokens (`/user/{userId}/openid/request_token`): a third party (an integration manager,
-- Element Call's SFU) learns who a user is by asking `/openid/userinfo` with one. Stored hashed,
-- like access tokens; they expire.
CREATE TABLE openid_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);
CREATE INDEX openid_tokens_expiry ON openid_tokens (expires_ts);
