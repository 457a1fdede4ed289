-- A pusher belongs to the device that set it, and goes when that device is deleted or logs out.
ALTER TABLE pushers ADD COLUMN device_id TEXT;
