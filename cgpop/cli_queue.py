"""`cgpop queue list|flush|remove`: the XTND XMIT outbound queue."""

from __future__ import annotations
