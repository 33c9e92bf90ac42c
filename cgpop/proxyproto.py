"""PROXY protocol v1 and v2 header parser (HAProxy's proxy-protocol.txt), sans-IO.

A trusted proxy prepends one header to the connection naming the real client. Feed `parse()` the
bytes received so far: it returns `NeedMore` until the header is complete, then a `ProxyResult`
with the client address and how many bytes the header took; the bytes after it belong to POP3.
Anything that is not a valid header raises `ProxyError` and the connection should be closed.
The caller accepts a header only from the listener's `proxy_from` addresses and requires one
from them (spec section 2: never guess whether a header is present).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

# Spec section 2.1: "PROXY UNKNOWN" plus two IPv6 addresses and ports: at most 107 bytes with CRLF.
V1_MAX = 107
V1_PREFIX = b"PROXY "
# Spec section 2.2: the 12-byte signature, then ver_cmd, fam, and a 16-bit big-endian length.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER = 16
# The spec allows up to 65535 bytes of addresses and TLVs. We accept far less: addresses take at
# most 216 bytes (AF_UNIX), and the TLVs real proxies send (ALPN, authority, SSL summary, AWS/Azure
# ids) fit easily; a 64 KiB header from a proxy is a fault, not something to buffer.
V2_MAX_PAYLOAD = 1024

# Spec section 2.2, the byte after the signature: high nibble version (2), low nibble command.
_CMD_LOCAL = 0x0
_CMD_PROXY = 0x1
# The family byte: high nibble address family, low nibble transport.
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_TRANSPORT_STREAM = 0x1
_ADDR_LEN = {_AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}


class ProxyError(ValueError):
    """Not a valid PROXY header: close the connection."""


@dataclass(frozen=True, slots=True)
class NeedMore:
    """The header is incomplete: read more bytes and call `parse()` again with all of them."""


@dataclass(frozen=True, slots=True)
class ProxyResult:
    """A complete header. `source`/`destination` are None for LOCAL (v2: a health check from the
    proxy itself, `local` True), UNKNOWN (v1), and unspecified or AF_UNIX families.
    `consumed` bytes of the buffer were the header. `client_of` says who the peer is then."""

    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    consumed: int
    version: int
    local: bool = False


# The peer of a proxied connection whose client the proxy did not name (v1 UNKNOWN, v2 UNSPEC or
# AF_UNIX): not an IP address, so never loopback (no plaintext login by default) and never
# trusted; all such clients share one per-address count and one failed-login record.
UNKNOWN_PEER = ("unknown", 0)


def client_of(result: ProxyResult, socket_peer: tuple[str, int]) -> tuple[str, int]:
    """The client a header names. Only a v2 LOCAL connection is the proxy's own (spec section
    2.2: "use the real connection endpoints"); for UNKNOWN and address-less families the
    proxy is relaying somebody it cannot name, and that somebody is not the proxy's loopback
    address (issue 10: v1 UNKNOWN allowed a plaintext login as if from 127.0.0.1)."""
    if result.source is not None:
        return result.source
    return socket_peer if result.local else UNKNOWN_PEER


NEED_MORE = NeedMore()


def parse(buf: bytes) -> ProxyResult | NeedMore:
    """Parse the PROXY header at the start of `buf`. Raises ProxyError for anything else."""
    if buf[: len(V2_SIGNATURE)] == V2_SIGNATURE[: len(buf)]:
        return _parse_v2(buf) if len(buf) >= len(V2_SIGNATURE) else NEED_MORE
    if buf[: len(V1_PREFIX)] == V1_PREFIX[: len(buf)]:
        return _parse_v1(buf) if len(buf) >= len(V1_PREFIX) else NEED_MORE
    raise ProxyError("no PROXY protocol header")


def _port(text: str) -> int:
    # Spec section 2.1: decimal 0..65535; leading zeros and signs are not part of the grammar.
    leading_zero = len(text) > 1 and text.startswith("0")
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or leading_zero:
        raise ProxyError("bad port in PROXY v1 header")
    port = int(text)
    if port > 65535:
        raise ProxyError("bad port in PROXY v1 header")
    return port


def _parse_v1(buf: bytes) -> ProxyResult | NeedMore:
    end = buf.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buf) >= V1_MAX or b"\n" in buf[:V1_MAX]:
            raise ProxyError("PROXY v1 header too long or not CRLF-terminated")
        return NEED_MORE
    try:
        line = buf[:end].decode("ascii")
    except UnicodeDecodeError as exc:
        raise ProxyError("PROXY v1 header is not ASCII") from exc
    fields = line.split(" ")
    consumed = end + 2
    # Spec section 2.1: "UNKNOWN" may be followed by anything up to CRLF, which is ignored.
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return ProxyResult(None, None, consumed, 1)
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyError("malformed PROXY v1 header")
    _, proto, src, dst, sport, dport = fields
    want = ipaddress.IPv4Address if proto == "TCP4" else ipaddress.IPv6Address
    if "%" in src or "%" in dst:  # ipaddress takes IPv6 zone ids; the spec's grammar does not
        raise ProxyError("bad address in PROXY v1 header")
    try:
        src_ip, dst_ip = want(src), want(dst)
    except ValueError as exc:
        raise ProxyError("bad address in PROXY v1 header") from exc
    return ProxyResult((str(src_ip), _port(sport)), (str(dst_ip), _port(dport)), consumed, 1)


def _parse_v2(buf: bytes) -> ProxyResult | NeedMore:
    if len(buf) < V2_HEADER:
        return NEED_MORE
    ver_cmd, fam, length = struct.unpack_from("!BBH", buf, len(V2_SIGNATURE))
    if ver_cmd >> 4 != 2:
        raise ProxyError("unsupported PROXY v2 version")
    command = ver_cmd & 0x0F
    if command not in (_CMD_LOCAL, _CMD_PROXY):
        raise ProxyError("unknown PROXY v2 command")
    if length > V2_MAX_PAYLOAD:
        raise ProxyError("PROXY v2 header too long")
    consumed = V2_HEADER + length
    if len(buf) < consumed:
        return NEED_MORE
    family, transport = fam >> 4, fam & 0x0F
    # Spec section 2.2: with LOCAL the receiver must ignore the address block and use the real
    # connection endpoints.
    if command == _CMD_LOCAL:
        return ProxyResult(None, None, consumed, 2, local=True)
    if family not in (_AF_UNSPEC, *_ADDR_LEN) or transport > 0x2:
        raise ProxyError("unknown PROXY v2 address family or transport")
    if family in (_AF_UNSPEC, _AF_UNIX):
        if family == _AF_UNIX and length < _ADDR_LEN[_AF_UNIX]:
            raise ProxyError("PROXY v2 address block too short")
        return ProxyResult(None, None, consumed, 2)
    if transport != _TRANSPORT_STREAM:
        # POP3 runs over TCP; a datagram or unspecified transport cannot be this connection.
        raise ProxyError("PROXY v2 transport is not a stream")
    if length < _ADDR_LEN[family]:
        raise ProxyError("PROXY v2 address block too short")
    body = buf[V2_HEADER:]
    size = 4 if family == _AF_INET else 16
    src_ip = ipaddress.ip_address(body[:size])
    dst_ip = ipaddress.ip_address(body[size : 2 * size])
    sport, dport = struct.unpack_from("!HH", body, 2 * size)
    # Whatever follows the addresses is TLVs (section 2.2, type-length-value vectors); we
    # have no use for them, so they are skipped unparsed.
    return ProxyResult((str(src_ip), sport), (str(dst_ip), dport), consumed, 2)
