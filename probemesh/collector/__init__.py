"""The probemesh collector: accepts agents, pushes checks, exports, detects outages."""
