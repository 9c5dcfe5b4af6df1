-- Meeting links: a room member lets guests without an account into the room's
-- conference (docs/protocol.md, "Meeting links"). Only the SHA-256 of a link's token
-- is stored, as for sessions; the token itself is handed out once, on creation.
CREATE TABLE meeting_links (
    id          bigserial PRIMARY KEY,
    room_id     bigint NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    token_hash  bytea NOT NULL UNIQUE,
    -- NULL once the creator's account is gone: the link stays until it expires.
    created_by  bigint REFERENCES users(id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    max_guests  int NOT NULL CHECK (max_guests BETWEEN 1 AND 100),
    -- Guests let in so far: bumped under the link's row lock, so never past max_guests.
    guests      int NOT NULL DEFAULT 0 CHECK (guests BETWEEN 0 AND max_guests)
);
-- conf_links (newest first) and the live-links count of conf_link_create.
CREATE INDEX meeting_links_room_idx ON meeting_links(room_id, id);
-- The ON DELETE SET NULL of a deleted user looks its links up by creator.
CREATE INDEX meeting_links_created_by_idx ON meeting_links(created_by)
    WHERE created_by IS NOT NULL;

-- A guest is a user row made by redeeming a link: no password (no login), never in
-- the directory, never a room member. Deleting the link deletes its guests, and with
-- them their sessions and conference participants (ON DELETE CASCADE).
ALTER TABLE users ADD COLUMN guest_link bigint REFERENCES meeting_links(id) ON DELETE CASCADE;
ALTER TABLE users ALTER COLUMN password_hash DROP NOT NULL;
ALTER TABLE users ADD CONSTRAINT users_password_or_guest
    CHECK (guest_link IS NOT NULL OR password_hash IS NOT NULL);
CREATE INDEX users_guest_link_idx ON users(guest_link) WHERE guest_link IS NOT NULL;
