-- Membership under the user's control: leaving rooms, blocking users, the room limits,
-- and admin moderation with its audit log (docs/protocol.md, "Membership").

-- A room an admin deleted: it keeps its row (and its sequence), has no members, and
-- its direct_key is cleared so the pair can open a new direct room.
ALTER TABLE rooms ADD COLUMN deleted_at timestamptz;

-- cam.roomsPerHour counts the rooms a user created within the last hour from the
-- store, so every chat replica agrees.
CREATE INDEX rooms_created_by_idx ON rooms(created_by, created_at);

-- A message an admin deleted keeps its seq (history stays gap-free) with kind
-- 'deleted' and an empty body. 'file' is kept for the file messages to come.
ALTER TABLE messages DROP CONSTRAINT messages_kind_check;
ALTER TABLE messages ADD CONSTRAINT messages_kind_check
    CHECK (kind IN ('text', 'system', 'file', 'deleted'));

-- blocker_id does not accept direct messages or invitations from blocked_id.
-- Private to the blocker: only the blocker lists them.
CREATE TABLE user_blocks (
    blocker_id  bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    blocked_id  bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (blocker_id, blocked_id),
    CHECK (blocker_id <> blocked_id)
);
CREATE INDEX user_blocks_blocked_idx ON user_blocks(blocked_id);

-- Every admin action, written in the transaction that carries it out. An admin
-- console pages it by id (newest first) and filters by actor, action or room.
-- The targets are plain columns, not foreign keys: the log outlives what it names.
CREATE TABLE audit_log (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    -- NULL: an operator at the command line (camctl); who ran it is in detail.
    actor_id  bigint REFERENCES users(id),
    action    text NOT NULL CHECK (action ~ '^[a-z_]{1,64}$'),
    room_id   bigint,
    user_id   bigint,
    seq       bigint,
    detail    jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_actor_idx ON audit_log(actor_id, id);
CREATE INDEX audit_log_action_idx ON audit_log(action, id);
CREATE INDEX audit_log_room_idx ON audit_log(room_id, id) WHERE room_id IS NOT NULL;
CREATE INDEX audit_log_user_idx ON audit_log(user_id, id) WHERE user_id IS NOT NULL;
