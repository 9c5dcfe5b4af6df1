-- The admin console (docs/protocol.md, "Admin API"): an administrator can deactivate a
-- user. A deactivated user cannot log in and has no live session; reactivating gives
-- the account back as it was (rooms, messages and files are kept throughout).
ALTER TABLE users ADD COLUMN deactivated_at timestamptz;
CREATE INDEX users_active_admins_idx ON users(id) WHERE is_admin AND deactivated_at IS NULL;
