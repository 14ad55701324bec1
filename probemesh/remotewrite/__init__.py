"""Generated Prometheus remote-write messages (proto/prometheus/remote.proto).

Never edit remote_pb2.py by hand: run ``python scripts/gen_proto.py``.
"""
