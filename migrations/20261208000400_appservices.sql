-- Application services (core/src/appservice). Their transactions are queued in the federation
-- outbox (`federation_outbox`, destination `as/<id>`), with the same per-destination backoff
-- and pinned transaction (`federation_destinations`) and leases.

-- How far the appservice tailer has read each stream it turns into transactions: one row. It
-- starts at the streams' current positions: appservices are sent what happens from now on.
CREATE TABLE appservice_tail (
    id BIGINT PRIMARY KEY NOT NULL CHECK (id = 0),
    events_pos BIGINT NOT NULL,
    receipts_pos BIGINT NOT NULL,
    to_device_pos BIGINT NOT NULL,
    device_lists_pos BIGINT NOT NULL
);
INSERT INTO appservice_tail (id, events_pos, receipts_pos, to_device_pos, device_lists_pos)
    SELECT 0,
        (SELECT pos FROM stream_positions WHERE stream = 'events'),
        (SELECT pos FROM stream_positions WHERE stream = 'receipts'),
        (SELECT pos FROM stream_positions WHERE stream = 'to_device'),
        (SELECT pos FROM stream_positions WHERE stream = 'device_lists');

-- Rooms an appservice published in the room directory of one of its networks
-- (`PUT /directory/list/appservice/{networkId}/{roomId}`).
CREATE TABLE appservice_room_list (
    appservice_id TEXT NOT NULL,
    network_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (appservice_id, network_id, room_id)
);
