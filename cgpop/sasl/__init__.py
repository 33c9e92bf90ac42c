"""SASL mechanisms for POP3 AUTH (RFC 5034), sans-IO, plus the APOP helpers.

The engine owns the POP3 framing: `AUTH name [ir]`, base64, `=` for an empty initial response,
`*` to cancel, the line bound (`MAX_RESPONSE_BYTES` decoded). A mechanism only sees decoded bytes
and answers with a `Step`::

    mech = create(name, config)            # None -> "-ERR unsupported mechanism"
    step = mech.start(initial_response)    # None if the client sent none, b"" for "="
    while True:
        match step:
            case Challenge(data):
                send("+ " + b64(data)); line = read_line()
                if line == "*": fail("-ERR cancelled"); break          # RFC 5034 section 4
                step = mech.respond(b64decode(line))                    # bad base64 -> -ERR
            case NeedCredentials(authcid, authzid, password):
                creds = await store.credentials(authcid)                # Credentials | None
                ok = None
                if password is not None:                                # PLAIN, LOGIN
                    ok = await to_thread(verify_password, creds or DUMMY_CREDENTIALS, password)
                step = mech.credentials(creds, ok)
            case Success(authcid, authzid, final):
                if authzid is not None and not is_admin(authcid): fail("-ERR [AUTH] ...")
                if final is not None:                                   # SCRAM server-final
                    send("+ " + b64(final)); read_line()                # client sends ""
                login(authzid or authcid); send("+OK"); break
            case Failure(reason, credentials_bad):
                penalty/log; send("-ERR [AUTH] ..." if credentials_bad else "-ERR ..."); break

Advertise `available(secure, plaintext_allowed)` in CAPA's SASL line and the bare `AUTH` list.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from .apop import apop_digest_ok, make_apop_banner
from .common import (
    MAX_RESPONSE_BYTES,
    Challenge,
    Failure,
    Mechanism,
    NeedCredentials,
    SaslConfig,
    SaslStateError,
    Step,
    Success,
)
from .crammd5 import CramMd5
from .login import Login
from .plain import Plain
from .scram import ScramSha256

MechanismFactory = Callable[[SaslConfig], Mechanism]

# Strongest first: the order CAPA and bare AUTH list them in.
MECHANISMS: Mapping[str, MechanismFactory] = MappingProxyType(
    {
        ScramSha256.name: ScramSha256,
        CramMd5.name: CramMd5,
        Plain.name: Plain,
        Login.name: Login,
    }
)

# Mechanisms that carry the password itself (RFC 4616 section 6): only on protected channels.
PLAINTEXT_MECHANISMS = frozenset({Plain.name, Login.name})


def available(secure: bool, plaintext_allowed: bool) -> list[str]:
    """Mechanism names to offer on this connection.

    `secure`: TLS is active or the peer is loopback. `plaintext_allowed`: the operator set
    `plaintext_auth = "always"`. PLAIN and LOGIN appear when either holds (RFC 2595 section 6 /
    RFC 8314: no cleartext passwords on an unprotected channel unless told so); SCRAM-SHA-256
    and CRAM-MD5 never expose the password and are always listed.
    """
    show_plain = secure or plaintext_allowed
    return [n for n in MECHANISMS if show_plain or n not in PLAINTEXT_MECHANISMS]


def create(name: str, config: SaslConfig) -> Mechanism | None:
    """A fresh mechanism for `name` (case-insensitive, as POP3 keywords are; RFC 2449 section 3),
    or None when it is unknown. The engine must also refuse a name `available()` did not list."""
    factory = MECHANISMS.get(name.upper())
    return factory(config) if factory is not None else None


__all__ = [
    "MAX_RESPONSE_BYTES",
    "MECHANISMS",
    "PLAINTEXT_MECHANISMS",
    "Challenge",
    "CramMd5",
    "Failure",
    "Login",
    "Mechanism",
    "MechanismFactory",
    "NeedCredentials",
    "Plain",
    "SaslConfig",
    "SaslStateError",
    "ScramSha256",
    "Step",
    "Success",
    "apop_digest_ok",
    "available",
    "create",
    "make_apop_banner",
]
