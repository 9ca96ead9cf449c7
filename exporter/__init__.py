"""kumo-suppression: a per-sending-domain suppression list for KumoMTA.

Library first: keys (normalization), records (log record -> event), rules (event ->
decision), store (SQLite), ingest (segments, files, stdin, webhook payloads), export
(store -> snapshots), config; facade.SuppressionList is the one object over them that
cli.py, the HTTP API and scripts use.
"""

__version__ = "0.1.0"

from .facade import SuppressionList  # noqa: E402 - after __version__, which cli.py imports

__all__ = ["SuppressionList", "__version__"]
