"""Hand one message to one SMTP server and report, per recipient, what became of it.

The SMTP dialogue is stdlib `smtplib` run in a worker thread (`asyncio.to_thread`): it is
blocking but correct, and its `data()` does the outgoing dot-stuffing (RFC 5321 section 4.5.2),
so the message bytes leave unchanged apart from that. The message must already have CRLF line
ends (it comes from `cgpop.pop3.body` and `xtnd.envelope`, which guarantee it).

RCPT is sent one recipient at a time (not `sendmail`, which folds refusals into
`SMTPRecipientsRefused` and hides the moment DATA ended), so each recipient gets its own outcome:

* ACCEPTED: 2xx to RCPT and to the end of DATA (RFC 5321 section 4.2.5: the server now owns it).
* TEMPORARY: a 4xx reply, or a connection, TLS, or timeout failure before the end of DATA
  was sent; certainly not accepted, retry later.
* PERMANENT: a 5xx reply (RFC 5321 section 4.2.1); bounce.
* UNCERTAIN: the connection broke or timed out *after* the final "." was written and before the
  reply arrived. The server may have accepted and be delivering the message (RFC 1047).

At-least-once: this module reports UNCERTAIN and the queue treats it as TEMPORARY, i.e. retries
and risks a duplicate, because RFC 5321 section 6.1 forbids silently losing a message a sender was
told is on its way ("+OK Message sent successfully"), and a duplicate is the lesser harm (the
classic MTA choice, RFC 1047). Every other failure is "certainly not accepted", so a retry then
can never duplicate.

`RelayResult.host_failure` is True when nothing recipient-specific was said (connect, greeting,
EHLO, STARTTLS, AUTH, MAIL FROM): the queue may try the next MX host at once.

AUTH failures and a missing STARTTLS/AUTH offer are reported TEMPORARY even for 5xx codes: they are
configuration problems of the smarthost link, and bouncing every queued message for them would be
worse than waiting for the administrator.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import smtplib
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["Outcome", "RecipientResult", "RelayResult", "StartTLS", "send"]

StartTLS = bool | Literal["opportunistic"]

# Bound on the server text kept per recipient (it ends up in logs and DSNs).
_MAX_TEXT = 512
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})\b")


class Outcome(Enum):
    """What happened to one recipient (see the module docstring)."""

    ACCEPTED = "accepted"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"
    UNCERTAIN = "uncertain"


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """One recipient's outcome with the server's reply (`code` None: no reply, e.g. timeout)."""

    recipient: str
    outcome: Outcome
    code: int | None
    text: str

    @property
    def status(self) -> str:
        """RFC 3463 status for a DSN: the server's enhanced code when it gave one."""
        found = _ENHANCED.match(self.text)
        if found and self.code is not None and found.group(1) == str(self.code)[0]:
            return found.group(0)
        if self.outcome is Outcome.ACCEPTED:
            return "2.0.0"
        if self.code is None:
            # RFC 3463 section 3.5: 4.4.1 no answer from host, 4.4.2 bad connection.
            return "4.4.2" if self.outcome is Outcome.UNCERTAIN else "4.4.1"
        return f"{self.code // 100}.0.0"

    @property
    def diagnostic(self) -> str:
        """The text for RFC 3464 `Diagnostic-Code: smtp; ...`."""
        return f"{self.code} {self.text}" if self.code is not None else self.text


@dataclass(frozen=True, slots=True)
class RelayResult:
    """Per-recipient outcomes of one delivery attempt to `host`, in recipient order."""

    host: str
    results: tuple[RecipientResult, ...]
    host_failure: bool

    def recipients(self, outcome: Outcome) -> tuple[str, ...]:
        return tuple(r.recipient for r in self.results if r.outcome is outcome)


async def send(
    host: str,
    port: int,
    sender: str,
    recipients: Sequence[str],
    message: bytes,
    *,
    helo: str,
    starttls: StartTLS = "opportunistic",
    auth: tuple[str, str] | None = None,
    timeout: float = 300.0,
    address: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> RelayResult:
    """Deliver `message` from `sender` ("" for a null reverse-path) to `recipients` via `host`.

    `host` is the server's name (certificate check, result); `address`, when given, is the IP to
    connect to (from `xtnd.mx`), otherwise the OS resolves `host`. `starttls`: True requires
    STARTTLS with certificate verification (a smarthost); "opportunistic" uses it when offered,
    unverified (RFC 7435; MX certificates rarely match, RFC 3207 section 4.1 leaves it to policy);
    False never. `ssl_context` overrides the context for either mode. `timeout` bounds each
    socket operation (RFC 5321 section 4.5.3.2 suggests minutes; 300 s by default). Cancelling
    the awaiting task does not stop the worker thread; it ends at the next timeout at the latest.
    """
    if not recipients:
        raise ValueError("no recipients")
    return await asyncio.to_thread(
        _deliver,
        host,
        port,
        sender,
        tuple(recipients),
        message,
        helo,
        starttls,
        auth,
        timeout,
        address,
        ssl_context,
    )


class _Client(smtplib.SMTP):
    """smtplib.SMTP that connects to a given address and notes when DATA's end was written."""

    def __init__(self, host: str, address: str | None, helo: str, timeout: float) -> None:
        super().__init__(local_hostname=helo, timeout=timeout)
        # smtplib takes the STARTTLS server name (SNI, certificate check) from `_host`, which
        # only its constructor sets, and only when it also connects at once.
        self._host = host
        self._address = address
        self.data_end_sent = False

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        # connect(host) keeps `host` as the TLS server name; the socket goes to the address.
        return socket.create_connection((self._address or host, port), timeout)

    def send(self, s: ReadableBuffer | str) -> None:
        super().send(s)
        # data() writes the stuffed body and the final CRLF "." CRLF in one send() call.
        if isinstance(s, bytes) and s.endswith(b"\r\n.\r\n"):
            self.data_end_sent = True


def _deliver(
    host: str,
    port: int,
    sender: str,
    recipients: tuple[str, ...],
    message: bytes,
    helo: str,
    starttls: StartTLS,
    auth: tuple[str, str] | None,
    timeout: float,
    address: str | None,
    ssl_context: ssl.SSLContext | None,
) -> RelayResult:
    client = _Client(host, address, helo, timeout)
    done: dict[str, RecipientResult] = {}
    accepted: list[str] = []
    stage = "connect"

    def finish(outcome: Outcome, code: int | None, text: str, *, host_failure: bool) -> RelayResult:
        for r in recipients:
            if r not in done:
                done[r] = RecipientResult(r, outcome, code, text)
        return RelayResult(host, tuple(done[r] for r in recipients), host_failure)

    try:
        code, reply = client.connect(host, port)
        if code != 220:
            # RFC 5321 section 3.1: a 554 greeting means no service here.
            return finish(_by_code(code), code, _text(reply), host_failure=True)
        stage = "EHLO"
        client.ehlo_or_helo_if_needed()
        if starttls is True or (starttls == "opportunistic" and client.has_extn("starttls")):
            stage = "STARTTLS"
            if not client.has_extn("starttls"):
                text = "server does not offer STARTTLS (required)"
                return finish(Outcome.TEMPORARY, None, text, host_failure=True)
            context = ssl_context or _context(verify=starttls is True)
            code, reply = client.starttls(context=context)
            client.ehlo()  # RFC 3207 section 4.2: forget what was learnt before TLS
        if auth is not None:
            stage = "AUTH"
            if not client.has_extn("auth"):
                text = "server does not offer AUTH (configured)"
                return finish(Outcome.TEMPORARY, None, text, host_failure=True)
            try:
                client.login(*auth)
            except smtplib.SMTPException as exc:
                auth_code, text = _describe(exc)
                text = f"AUTH failed: {text}"
                return finish(Outcome.TEMPORARY, auth_code, text, host_failure=True)

        stage = "MAIL FROM"
        options: list[str] = []
        if client.has_extn("size"):
            options.append(f"SIZE={len(message)}")  # RFC 1870
        if client.has_extn("8bitmime") and any(b > 0x7F for b in message):
            options.append("BODY=8BITMIME")  # RFC 6152
        code, reply = client.mail(sender, options)
        if code != 250:
            return finish(_by_code(code), code, _text(reply), host_failure=True)

        stage = "RCPT TO"
        for r in recipients:
            code, reply = client.rcpt(r)
            if 200 <= code < 300:
                accepted.append(r)
            else:
                done[r] = RecipientResult(r, _by_code(code), code, _text(reply))
        if not accepted:
            _quit(client)
            return finish(Outcome.TEMPORARY, None, "", host_failure=False)

        stage = "DATA"
        code, reply = client.data(message)
        outcome = Outcome.ACCEPTED if 200 <= code < 300 else _by_code(code)
        _quit(client)
        return finish(outcome, code, _text(reply), host_failure=False)
    except (smtplib.SMTPException, OSError) as exc:
        # OSError covers refused connections, DNS failure in connect, timeouts and ssl.SSLError.
        error_code, text = _describe(exc)
        text = f"{stage}: {text}"
        if stage == "DATA" and client.data_end_sent:
            # The final "." went out; only the reply was lost. See the module docstring.
            return finish(Outcome.UNCERTAIN, None, text, host_failure=False)
        outcome = _by_code(error_code) if error_code is not None else Outcome.TEMPORARY
        if stage == "STARTTLS":
            outcome = Outcome.TEMPORARY  # a TLS problem is the link's, not the recipients'
        early = stage not in ("RCPT TO", "DATA")
        return finish(outcome, error_code, text, host_failure=early)
    finally:
        client.close()


def _by_code(code: int) -> Outcome:
    """RFC 5321 section 4.2.1: 5yz is permanent; anything else that is not 2yz is retried."""
    if 200 <= code < 300:
        return Outcome.ACCEPTED
    return Outcome.PERMANENT if 500 <= code < 600 else Outcome.TEMPORARY


def _describe(exc: BaseException) -> tuple[int | None, str]:
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code, _text(exc.smtp_error)
    if isinstance(exc, TimeoutError | socket.timeout):
        return None, "timed out"
    return None, _text(str(exc) or type(exc).__name__)


def _text(reply: bytes | str) -> str:
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    return re.sub(r"\s+", " ", reply).strip()[:_MAX_TEXT]


def _context(*, verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not verify:
        # RFC 7435 opportunistic security: encrypt without authenticating the peer.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _quit(client: smtplib.SMTP) -> None:
    """QUIT politely; its failure changes nothing that was already decided."""
    with contextlib.suppress(smtplib.SMTPException, OSError):
        client.quit()
