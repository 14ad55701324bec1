-- One row per agent: the collector whose ingest alone may apply and commit the
-- agent's results, and the epoch each take of the lease increments.
CREATE TABLE leases (
    agent_id TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    taken_at DOUBLE PRECISION NOT NULL
);
-- The poll for leases other collectors took lately.
CREATE INDEX leases_taken_at ON leases(taken_at);
-- A lease's take reads the agent's counters: they carry the agent id (the
-- key's third element) in a column of their own.
ALTER TABLE counters ADD COLUMN agent_id TEXT;
UPDATE counters SET agent_id = (key::json)->>2;
CREATE INDEX counters_agent ON counters(agent_id);
