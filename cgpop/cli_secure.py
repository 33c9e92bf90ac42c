"""`cgpop cert` and `cgpop alert`: TLS certificates for testing, and account alerts."""

from __future__ import annotations
