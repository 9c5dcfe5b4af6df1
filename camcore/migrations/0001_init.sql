-- Accounts, rooms, membership and messages. Postgres is the only source of truth.

CREATE TABLE users (
    id            bigserial PRIMARY KEY,
    username      text NOT NULL UNIQUE CHECK (username ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    display_name  text NOT NULL,
    password_hash text NOT NULL,
    is_admin      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Server-side sessions; only a hash of the token is stored.
CREATE TABLE sessions (
    token_hash  bytea PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);
CREATE INDEX sessions_user_idx ON sessions(user_id);

CREATE TABLE rooms (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('group', 'direct')),
    name        text NOT NULL,
    -- "<low user id>:<high user id>" for direct rooms, so a pair has one room.
    direct_key  text UNIQUE,
    created_by  bigint NOT NULL REFERENCES users(id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Last assigned sequence number; bumped in the same transaction as the insert,
    -- so the row lock orders senders of one room and a rollback leaves no gap.
    last_seq    bigint NOT NULL DEFAULT 0
);

CREATE TABLE room_members (
    room_id    bigint NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    user_id    bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    joined_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_members_user_idx ON room_members(user_id);

CREATE TABLE messages (
    room_id     bigint NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    seq         bigint NOT NULL,
    cid         text NOT NULL,
    sender_id   bigint NOT NULL REFERENCES users(id),
    kind        text NOT NULL DEFAULT 'text' CHECK (kind IN ('text', 'system')),
    body        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (room_id, seq),
    -- Idempotent sends: a retried client message id maps to the stored row.
    UNIQUE (room_id, sender_id, cid)
);

-- Stores one message with the room's next sequence number, atomically and
-- idempotently. Returns the stored row's seq and time, and whether it already existed.
-- No row at all means the sender is not a member of the room.
CREATE FUNCTION cam_post_message(p_room bigint, p_sender bigint, p_cid text, p_kind text, p_body text,
                                 OUT seq bigint, OUT created_at timestamptz, OUT duplicate boolean)
RETURNS SETOF record LANGUAGE plpgsql AS $$
BEGIN
    SELECT m.seq, m.created_at, true INTO seq, created_at, duplicate
      FROM messages m WHERE m.room_id = p_room AND m.sender_id = p_sender AND m.cid = p_cid;
    IF FOUND THEN
        RETURN NEXT;
        RETURN;
    END IF;
    BEGIN
        UPDATE rooms r SET last_seq = r.last_seq + 1
          FROM room_members rm
         WHERE r.id = p_room AND rm.room_id = r.id AND rm.user_id = p_sender
        RETURNING r.last_seq INTO seq;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        INSERT INTO messages (room_id, seq, cid, sender_id, kind, body)
             VALUES (p_room, seq, p_cid, p_sender, p_kind, p_body)
          RETURNING messages.created_at INTO created_at;
        duplicate := false;
    EXCEPTION WHEN unique_violation THEN
        -- A concurrent retry of the same cid won; the subtransaction (and its seq bump)
        -- is rolled back, so the sequence stays gap-free.
        SELECT m.seq, m.created_at, true INTO seq, created_at, duplicate
          FROM messages m WHERE m.room_id = p_room AND m.sender_id = p_sender AND m.cid = p_cid;
    END;
    RETURN NEXT;
END $$;
