-- A registration's UIA session remembers the account it created, so that a client repeating
-- the completed request (its answer was lost) gets that account again instead of an error.
ALTER TABLE uia_sessions ADD COLUMN registered_user_id TEXT;
-- The body of the request that started a registration's session (less `auth`): the later
-- stages may send only `auth`, and the registration uses what the first request asked for.
ALTER TABLE uia_sessions ADD COLUMN params TEXT;
