"""XTND XMIT as a service of the gateway: submission, local delivery, the relay queue.

`start_submission(gateway)` is called by the Gateway at start when `[xtnd] enabled`.
"""

from __future__ import annotations

from typing import Any


async def start_submission(gateway: Any) -> Any:
    """Not wired yet: returns None, so the Gateway leaves XTND out of CAPA and refuses it."""
    return None
