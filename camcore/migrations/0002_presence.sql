-- Presence: which edge holds which live session, and each user's status.

-- One row per edge process that registered sessions; heartbeats bump last_seen.
-- A row not seen for cam.nodeTimeout is swept: its sessions are removed.
CREATE TABLE presence_nodes (
    node       text PRIMARY KEY,
    boot_id    text NOT NULL,
    last_seen  timestamptz NOT NULL DEFAULT now(),
    alive      boolean NOT NULL DEFAULT true
);

-- One row per live WebSocket session (a user may have several, on several nodes).
CREATE TABLE presence_sessions (
    session_id  bigint PRIMARY KEY,
    node        text NOT NULL,
    user_id     bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    since       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX presence_sessions_node_idx ON presence_sessions(node);
CREATE INDEX presence_sessions_user_idx ON presence_sessions(user_id);

-- The status a user chose (kept across reconnects) and the status last published.
-- version is bumped with every published change, so watchers can order them.
CREATE TABLE user_status (
    user_id     bigint PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    chosen      text NOT NULL DEFAULT 'online'
                CHECK (chosen IN ('online', 'away', 'busy', 'invisible')),
    shown       text NOT NULL DEFAULT 'offline'
                CHECK (shown IN ('online', 'away', 'busy', 'offline')),
    version     bigint NOT NULL DEFAULT 0,
    changed_at  timestamptz NOT NULL DEFAULT now()
);
