-- Read markers: how far each user has read each room (docs/protocol.md, "mark_read").
-- One row per user and room, written by the chat service's mark_read only, and only
-- ever moved forward. Kept when the user leaves the room, so a direct room opened
-- again shows what came meanwhile as unread.
CREATE TABLE read_markers (
    user_id     bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    room_id     bigint NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    read_seq    bigint NOT NULL CHECK (read_seq >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, room_id)
);
-- The cascade from a deleted room looks its markers up by room.
CREATE INDEX read_markers_room_idx ON read_markers(room_id);
