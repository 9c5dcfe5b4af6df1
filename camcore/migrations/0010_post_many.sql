-- Stores a batch of sends in one statement (group commit, services/chat/cam_chat/batch.py).
--
-- The batch's rooms are locked first, in ascending id order: two batches cannot deadlock
-- on each other, and cam_post_message (which locks its room by its seq bump) waits for
-- them too. The second statement then runs on a snapshot taken after those locks, so it
-- sees every message committed by whoever held them before: it finds the cids already
-- stored (returned as duplicates), gives the sends of members the next seqs of each room
-- in the order given, bumps each room's last_seq once, and inserts the rows. Nothing can
-- insert the same cid concurrently, so no row needs a subtransaction of its own, as
-- cam_post_message's exception block is.
--
-- The caller passes each (room, sender, cid) at most once. One row out per row in, by
-- position i (1-based): seq NULL means the sender is not a member of the room.
CREATE FUNCTION cam_post_messages(p_rooms bigint[], p_senders bigint[], p_cids text[],
                                  p_kinds text[], p_bodies text[])
RETURNS TABLE (i bigint, seq bigint, created_at timestamptz, duplicate boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM 1 FROM rooms r WHERE r.id = ANY (p_rooms) ORDER BY r.id FOR UPDATE;
    RETURN QUERY
    WITH t AS (
        SELECT * FROM unnest(p_rooms, p_senders, p_cids, p_kinds, p_bodies)
               WITH ORDINALITY AS t(room, sender, cid, kind, body, i)
    ), dup AS (
        SELECT t.i, m.seq, m.created_at
          FROM t JOIN messages m
            ON m.room_id = t.room AND m.sender_id = t.sender AND m.cid = t.cid
    ), fresh AS (
        SELECT t.i, t.room, t.sender, t.cid, t.kind, t.body,
               row_number() OVER (PARTITION BY t.room ORDER BY t.i) AS k
          FROM t
         WHERE NOT EXISTS (SELECT 1 FROM dup WHERE dup.i = t.i)
           AND EXISTS (SELECT 1 FROM room_members rm
                        WHERE rm.room_id = t.room AND rm.user_id = t.sender)
    ), bump AS (
        UPDATE rooms r SET last_seq = r.last_seq + c.n
          FROM (SELECT fresh.room, count(*) AS n FROM fresh GROUP BY fresh.room) c
         WHERE r.id = c.room
        RETURNING r.id, r.last_seq - c.n AS base
    ), ins AS (
        INSERT INTO messages (room_id, seq, cid, sender_id, kind, body)
        SELECT f.room, b.base + f.k, f.cid, f.sender, f.kind, f.body
          FROM fresh f JOIN bump b ON b.id = f.room
        RETURNING messages.room_id, messages.seq, messages.created_at
    )
    SELECT t.i, coalesce(d.seq, x.seq), coalesce(d.created_at, x.created_at),
           d.i IS NOT NULL
      FROM t
      LEFT JOIN dup d ON d.i = t.i
      LEFT JOIN fresh f ON f.i = t.i
      LEFT JOIN bump b ON b.id = f.room
      LEFT JOIN ins x ON x.room_id = f.room AND x.seq = b.base + f.k
     ORDER BY t.i;
END $$;
