-- What admins set on accounts (Synapse's admin API): shadow-banned users' sends reach no one,
-- locked users cannot log in or use their tokens, suspended users can read but not send,
-- erased users' events are served redacted; `user_type` is Synapse's free-form tag.
ALTER TABLE users ADD COLUMN shadow_banned BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN locked BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN suspended BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN erased BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN user_type TEXT;
CREATE INDEX users_created ON users (created_ts);

-- Per-user rate limit overrides; 0/0 exempts the user.
CREATE TABLE ratelimit_overrides (
    user_id TEXT PRIMARY KEY NOT NULL,
    messages_per_second BIGINT NOT NULL,
    burst_count BIGINT NOT NULL
);

-- Where and with what each device was last seen, per address and user agent (whois).
CREATE TABLE user_ips (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    ip TEXT NOT NULL,
    user_agent TEXT NOT NULL,
    last_seen BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, ip, user_agent)
);

-- Each user's server notices room.
CREATE TABLE server_notice_rooms (
    user_id TEXT PRIMARY KEY NOT NULL,
    room_id TEXT NOT NULL
);
