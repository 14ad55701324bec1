-- Shared verdicts (probemesh/collector/shared.py): the classifier inputs each
-- collector publishes for the agents it serves (one row per check and agent,
-- numbered by the publishing collector's seq, gone once the pair is), each
-- publisher's last number and liveness beat, the agents each collector
-- serves (a JSON description, every collector lists them all), and the
-- evaluator's latest evaluation (a JSON document every collector serves).
CREATE TABLE verdict_inputs (
    check_name TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    country TEXT NOT NULL,
    success BOOLEAN,
    confirmed BOOLEAN,
    fresh BOOLEAN NOT NULL,
    settled BOOLEAN NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    streak INTEGER NOT NULL,
    refused BOOLEAN NOT NULL,
    last_ts DOUBLE PRECISION NOT NULL,
    collector_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    gone BOOLEAN NOT NULL,
    PRIMARY KEY (check_name, agent_id)
);
CREATE INDEX verdict_inputs_publication ON verdict_inputs (collector_id, seq);
CREATE TABLE verdict_agents (
    agent_id TEXT PRIMARY KEY,
    connected BOOLEAN NOT NULL,
    last_seen DOUBLE PRECISION NOT NULL,
    doc TEXT NOT NULL,
    collector_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    gone BOOLEAN NOT NULL
);
CREATE INDEX verdict_agents_publication ON verdict_agents (collector_id, seq);
CREATE TABLE verdict_publishers (
    collector_id TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    beat BIGINT NOT NULL
);
CREATE TABLE verdict_evaluation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    evaluator TEXT NOT NULL,
    evaluation BIGINT NOT NULL,
    doc TEXT NOT NULL
);
