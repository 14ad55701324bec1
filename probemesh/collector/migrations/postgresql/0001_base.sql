-- Times are seconds since the epoch (DOUBLE PRECISION: REAL would round them
-- to minutes); sequence numbers, revisions and counters are BIGINT.
CREATE TABLE tokens (
    token_id TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    country TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    last_used DOUBLE PRECISION,
    revoked_at DOUBLE PRECISION
);
CREATE TABLE marks (
    agent_id TEXT PRIMARY KEY,
    mark BIGINT NOT NULL,
    ranges TEXT NOT NULL
);
CREATE TABLE counters (
    key TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
CREATE TABLE histograms (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
CREATE TABLE revisions (
    revision BIGINT PRIMARY KEY,
    digest TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE assignments (
    agent_id TEXT NOT NULL,
    check_name TEXT NOT NULL,
    first_rev BIGINT NOT NULL,
    last_rev BIGINT NOT NULL,
    target TEXT NOT NULL,
    module TEXT NOT NULL,
    closed_at DOUBLE PRECISION,
    expires_at DOUBLE PRECISION,
    PRIMARY KEY (agent_id, check_name, first_rev)
);
CREATE TABLE incidents (
    id BIGINT PRIMARY KEY,
    check_name TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION,
    data TEXT NOT NULL
);
CREATE INDEX incidents_active ON incidents(ended_at);
