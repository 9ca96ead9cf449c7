"""kumo-suppression: a per-sending-domain suppression list for KumoMTA.

Library first: keys (normalization), records (log record -> event), rules (event ->
decision), store (SQLite), ingest (segments, files, stdin, webhook payloads), export
(store -> snapshots), config; cli.py is a thin layer on top.
"""

__version__ = "0.1.0"
