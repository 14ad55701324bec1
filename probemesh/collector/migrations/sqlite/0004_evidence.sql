-- Evidence shared through the mesh's database (probemesh/collector/shared.py):
-- the latest evidence each collector's agents reported, one row per check,
-- agent and slot (failing, control, path, or recovered: a time and no
-- evidence), numbered by the publishing collector's seq like its inputs and
-- gone once forgotten; times on the database server's clock. Each
-- publication records its collector's clock minus the server's (skew).
CREATE TABLE verdict_evidence (
    check_name TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    slot TEXT NOT NULL,
    country TEXT NOT NULL,
    evidence BLOB,
    received REAL NOT NULL,
    since REAL NOT NULL,
    collector_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    gone BOOLEAN NOT NULL,
    PRIMARY KEY (check_name, agent_id, slot)
);
CREATE INDEX verdict_evidence_publication ON verdict_evidence (collector_id, seq);
-- The evaluator's requests for evidence from agents another collector serves:
-- that collector takes them and sends them on its agents' streams.
CREATE TABLE evidence_requests (
    collector_id TEXT NOT NULL,
    check_name TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    path BOOLEAN NOT NULL,
    PRIMARY KEY (collector_id, check_name, agent_id)
);
-- The publisher's wall clock minus the database server's, at its last publication.
ALTER TABLE verdict_publishers ADD COLUMN skew REAL NOT NULL DEFAULT 0;
