-- A UIA session authorises only the request that started it: the hash of its method, path and
-- body without `auth`. Sessions from before this column have none and authorise nothing.
ALTER TABLE uia_sessions ADD COLUMN operation TEXT;
