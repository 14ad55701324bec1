"""The probemesh agent: receives checks, probes targets, streams results durably."""
