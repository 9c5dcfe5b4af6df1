-- Attachments (docs/storage.md). The bytes live in the store of cam.storage under the
-- file's server-made id; this row is what the cluster knows about them. The name the
-- uploader gave is metadata only, never part of a path.
CREATE TABLE files (
    id            text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{22}$'),
    room_id       bigint NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    uploader_id   bigint NOT NULL REFERENCES users(id),
    name          text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 255),
    -- 'pending' while the bytes stream in: not downloadable, and its reserved bytes
    -- count against the uploader's quotas so parallel uploads cannot overrun them.
    state         text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'ready')),
    reserved      bigint NOT NULL CHECK (reserved >= 0),
    size          bigint CHECK (size >= 0),
    sha256        bytea CHECK (octet_length(sha256) = 32),
    content_type  text,
    width         int CHECK (width > 0),
    height        int CHECK (height > 0),
    -- Stored derivatives besides the original: 'thumb', 'preview'.
    variants      text[] NOT NULL DEFAULT '{}',
    -- The store the bytes were written to, and for cam.storage=local the
    -- server-to-server address (a cam.clusterHosts entry) of the node holding them.
    storage       text NOT NULL CHECK (storage IN ('shared', 'local', 's3')),
    holder        text,
    -- The edge (cam.nodeName) that took the upload: when it starts again, its uploads
    -- that were in progress are gone.
    edge_node     text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    committed_at  timestamptz,
    CHECK (state = 'pending' OR (size IS NOT NULL AND sha256 IS NOT NULL
                                 AND content_type IS NOT NULL))
);
-- The hourly and total quotas sum a user's files.
CREATE INDEX files_uploader_idx ON files(uploader_id, created_at);
-- The orphan sweep: uploads that never finished.
CREATE INDEX files_pending_idx ON files(created_at) WHERE state = 'pending';

-- A message of kind 'file' names its attachment; one message per file.
ALTER TABLE messages ADD COLUMN file_id text REFERENCES files(id);
CREATE UNIQUE INDEX messages_file_idx ON messages(file_id) WHERE file_id IS NOT NULL;
-- Set in the transaction of the insert (cam_chat send_file).
ALTER TABLE messages ADD CONSTRAINT messages_file_kind
    CHECK (file_id IS NULL OR kind IN ('file', 'deleted'));
