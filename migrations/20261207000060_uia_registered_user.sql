-- A registration's UIA session remembers the account it created, so that a client repeating
-- the completed request (its answer was lost) gets that account again instead of an error.
ALTER TABLE uia_sessions ADD COLUMN registered_user_id TEXT;
