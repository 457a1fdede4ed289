-- Delayed events (MSC4140): events users scheduled, sent by the server when due unless
-- restarted or cancelled first. Scheduled while `outcome` is NULL; the timer of any process
-- may fire a due row after claiming it (`claimed_until`, a lease set by a conditional UPDATE).
CREATE TABLE delayed_events (
    delay_id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT,                    -- the message form's transaction ID: retries answer the same row
    room_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    state_key TEXT,                 -- NULL for a message event
    content TEXT NOT NULL,          -- as the client gave it
    delay_ms BIGINT NOT NULL,
    running_since BIGINT NOT NULL,  -- scheduled or last restarted
    send_ts BIGINT NOT NULL,        -- running_since + delay_ms
    claimed_until BIGINT,
    outcome TEXT,                   -- 'send', 'cancel' or 'error' once finalised
    event_id TEXT,
    error TEXT,                     -- the Matrix error that stopped it, as JSON
    finalised_ts BIGINT
);
CREATE INDEX delayed_events_due ON delayed_events (send_ts) WHERE outcome IS NULL;
CREATE INDEX delayed_events_user ON delayed_events (user_id, finalised_ts);
CREATE UNIQUE INDEX delayed_events_txn ON delayed_events (user_id, device_id, txn_id);
CREATE INDEX delayed_events_finalised ON delayed_events (finalised_ts) WHERE outcome IS NOT NULL;

-- Delayed leave events a user handed to this server to manage (MSC4195's
-- `delegate_delayed_leave`): restarted while the participant is connected to the SFU, sent
-- once it disconnects. One per (user, room, slot, member); a new delay_id replaces the old.
CREATE TABLE rtc_delegations (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    slot_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    delay_id TEXT NOT NULL,
    livekit_room TEXT NOT NULL,
    livekit_identity TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, slot_id, member_id)
);
