-- Transactions received from other servers, with the answer given: a transaction sent again
-- (the sender did not hear the answer) is answered the same and processed once.
CREATE TABLE federation_inbound_transactions (
    origin TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    response_json TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, txn_id)
);
CREATE INDEX federation_inbound_transactions_ts ON federation_inbound_transactions (received_ts);
