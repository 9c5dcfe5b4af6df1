-- Web conferences: video servers (SFUs), conferences placed on them, participants.

CREATE TABLE video_servers (
    name         text PRIMARY KEY,
    position     int NOT NULL,            -- order in cam.videoDomains (fill order)
    capacity     int NOT NULL CHECK (capacity > 0),
    url          text NOT NULL,
    -- 'active' takes new conferences; 'draining' keeps its conferences but takes no
    -- new ones; 'removed' is no longer in cam.videoDomains.
    admin_state  text NOT NULL DEFAULT 'active'
                 CHECK (admin_state IN ('active', 'draining', 'removed')),
    last_ok      timestamptz,             -- last successful health probe
    healthy      boolean NOT NULL DEFAULT false
);

CREATE TABLE conferences (
    id           bigserial PRIMARY KEY,
    room_id      bigint NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    server       text NOT NULL REFERENCES video_servers(name),
    janus_room   bigint NOT NULL,
    pin          text NOT NULL,
    state        text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'ended')),
    -- The server's load when this conference was placed, and why it went there.
    placed_load  int NOT NULL,
    overflow     boolean NOT NULL DEFAULT false,
    explanation  jsonb NOT NULL,
    moves        int NOT NULL DEFAULT 0,
    -- Participants the SFU itself reported at the last reconciliation.
    sfu_participants int NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    ended_at     timestamptz
);
-- One live conference per chat room: concurrent first joins meet here.
CREATE UNIQUE INDEX conferences_live_room ON conferences(room_id) WHERE state = 'active';
CREATE INDEX conferences_server ON conferences(server) WHERE state = 'active';

CREATE TABLE conference_participants (
    conference_id bigint NOT NULL REFERENCES conferences(id) ON DELETE CASCADE,
    user_id       bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    session_id    bigint NOT NULL,        -- the edge connection (see presence_sessions)
    node          text NOT NULL,
    joined_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conference_id, session_id)
);
CREATE INDEX conference_participants_session ON conference_participants(session_id);
