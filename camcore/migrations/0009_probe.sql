-- The self-probe (docs/monitoring.md, "The self-probe"): a system account and its room.
-- Every edge posts a message into the room as this account, through itself, and times
-- its arrival at every edge. A system account is nobody's: it has no password (the
-- hash '!' matches none, and logins refuse system accounts anyway), it is in no user
-- list or directory, it cannot be invited or sent a direct message, and it is a member
-- of its room only. The edges make its sessions themselves, as they make everyone's.
ALTER TABLE users ADD COLUMN system_role text UNIQUE CHECK (system_role IN ('probe'));

DO $$
DECLARE
    account text := 'cam-probe';
    uid bigint;
    rid bigint;
BEGIN
    -- Someone may already be called cam-probe: the account then takes another name
    -- (the edges find it by its role, never by its name).
    IF EXISTS (SELECT 1 FROM users WHERE username = account) THEN
        account := 'cam-probe-' || substr(md5(random()::text), 1, 8);
    END IF;
    INSERT INTO users (username, display_name, password_hash, system_role)
         VALUES (account, 'Self-probe', '!', 'probe') RETURNING id INTO uid;
    INSERT INTO rooms (kind, name, created_by) VALUES ('group', 'cam-probe', uid)
      RETURNING id INTO rid;
    INSERT INTO room_members (room_id, user_id) VALUES (rid, uid);
END $$;
