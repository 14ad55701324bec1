-- The collector's state before versioned migrations existed: IF NOT EXISTS
-- adopts a database file written by an older probemesh as it is.
CREATE TABLE IF NOT EXISTS tokens (
    token_id TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    country TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_used REAL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS marks (
    agent_id TEXT PRIMARY KEY,
    mark INTEGER NOT NULL,
    ranges TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS histograms (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS revisions (
    revision INTEGER PRIMARY KEY,
    digest TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
    agent_id TEXT NOT NULL,
    check_name TEXT NOT NULL,
    first_rev INTEGER NOT NULL,
    last_rev INTEGER NOT NULL,
    target TEXT NOT NULL,
    module TEXT NOT NULL,
    closed_at REAL,
    expires_at REAL,
    PRIMARY KEY (agent_id, check_name, first_rev)
);
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY,
    check_name TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_active ON incidents(ended_at);
