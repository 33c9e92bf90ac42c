"""CommuniGate-style alerts: texts posted for one account, a domain or the whole server, each
shown once to every account it concerns as the error of a login with correct credentials.

The store keeps them (cgpop.store.api.Alerts); this module has the rule for their text.
"""

from __future__ import annotations

# The text goes out as `-ERR [SYS/TEMP] <text>\r\n`: RFC 2449 section 4 bounds a response
# line to 512 octets including CRLF, and the prefix takes 16.
MAX_TEXT_OCTETS = 512 - len("-ERR [SYS/TEMP] ") - 2


def check_text(text: str) -> str:
    """The text as it will be sent, or ValueError: one line, not empty, bounded."""
    text = text.strip()
    if not text:
        raise ValueError("alert text is empty")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise ValueError("alert text must be one line without control characters")
    if len(text.encode("utf-8")) > MAX_TEXT_OCTETS:
        raise ValueError(f"alert text longer than {MAX_TEXT_OCTETS} octets (UTF-8)")
    return text
