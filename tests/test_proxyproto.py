"""PROXY protocol v1/v2 parser: both versions, byte-at-a-time input, garbage and oversize."""

from __future__ import annotations

import socket
import struct

import pytest

from cgpop.proxyproto import (
    V1_MAX,
    V2_MAX_PAYLOAD,
    V2_SIGNATURE,
    NeedMore,
    ProxyError,
    ProxyResult,
    parse,
)

POP = b"+OK not part of the header\r\n"


def v2(cmd: int, fam: int, payload: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | cmd, fam, len(payload)) + payload


def v2_inet(src: str, dst: str, sport: int, dport: int, tlvs: bytes = b"") -> bytes:
    addrs = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return v2(0x1, 0x11, addrs + tlvs)


def v2_inet6(src: str, dst: str, sport: int, dport: int) -> bytes:
    addrs = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
    return v2(0x1, 0x21, addrs + struct.pack("!HH", sport, dport))


def feed_bytewise(data: bytes) -> ProxyResult:
    """Feed one byte more each time, as a slow proxy would; every prefix must be NeedMore."""
    for i in range(1, len(data) + 1):
        result = parse(data[:i])
        if isinstance(result, ProxyResult):
            return result
        assert isinstance(result, NeedMore)
    raise AssertionError("header never completed")


# -- v1 ----------------------------------------------------------------------------------------


def test_v1_tcp4() -> None:
    header = b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 110\r\n"
    result = parse(header + POP)
    assert result == ProxyResult(("192.0.2.10", 56324), ("198.51.100.1", 110), len(header), 1)


def test_v1_tcp6() -> None:
    header = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n"
    result = parse(header)
    assert isinstance(result, ProxyResult)
    assert result.source == ("2001:db8::1", 1)
    assert result.destination == ("2001:db8::2", 65535)


def test_v1_unknown() -> None:
    header = b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n"
    assert parse(header + POP) == ProxyResult(None, None, len(header), 1)
    assert parse(b"PROXY UNKNOWN\r\n") == ProxyResult(None, None, 15, 1)


def test_v1_longest_allowed_header() -> None:
    ip = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    header = f"PROXY TCP6 {ip} {ip} 65535 65535\r\n".encode()
    assert len(header) == 104
    padded = b"PROXY UNKNOWN " + b"x" * (V1_MAX - 16) + b"\r\n"
    assert len(padded) == V1_MAX
    assert isinstance(feed_bytewise(header), ProxyResult)
    assert isinstance(parse(padded), ProxyResult)


def test_v1_byte_at_a_time() -> None:
    header = b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 110\r\n"
    assert feed_bytewise(header).consumed == len(header)


def test_v1_oversize() -> None:
    with pytest.raises(ProxyError):
        parse(b"PROXY UNKNOWN " + b"x" * V1_MAX)
    with pytest.raises(ProxyError):
        parse(b"PROXY UNKNOWN " + b"x" * (V1_MAX - 15) + b"\r\n")


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 192.0.2.10 198.51.100.1 56324\r\n",  # missing port
        b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 110 extra\r\n",
        b"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n",  # family mismatch
        b"PROXY TCP6 192.0.2.1 192.0.2.2 1 2\r\n",
        b"PROXY TCP6 fe80::1%eth0 fe80::2 1 2\r\n",  # zone id
        b"PROXY TCP4 192.0.2.010 192.0.2.2 1 2\r\n",  # leading zero octet
        b"PROXY TCP4 192.0.2.1 192.0.2.2 65536 2\r\n",  # port range
        b"PROXY TCP4 192.0.2.1 192.0.2.2 01 2\r\n",  # leading zero port
        b"PROXY TCP4 192.0.2.1 192.0.2.2 -1 2\r\n",
        b"PROXY TCP4  192.0.2.1 192.0.2.2 1 2\r\n",  # double space
        b"PROXY UDP4 192.0.2.1 192.0.2.2 1 2\r\n",
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\n",  # bare LF
        b"PROXY TCP4 192.0.2.1 192.0.2.\xff 1 2\r\n",
    ],
)
def test_v1_malformed(header: bytes) -> None:
    with pytest.raises(ProxyError):
        parse(header)


# -- v2 ----------------------------------------------------------------------------------------


def test_v2_haproxy_capture() -> None:
    # A v2 header as HAProxy sends it (TCP over IPv4, 172.19.0.1:42578 -> 172.19.0.3:80).
    header = bytes.fromhex("0d0a0d0a000d0a515549540a2111000cac130001ac130003a6520050")
    result = parse(header + b"GET / HTTP/1.1\r\n")
    assert result == ProxyResult(("172.19.0.1", 42578), ("172.19.0.3", 80), 28, 2)


def test_v2_inet6_byte_at_a_time() -> None:
    header = v2_inet6("2001:db8::1", "2001:db8::2", 40000, 995)
    result = feed_bytewise(header)
    assert result == ProxyResult(("2001:db8::1", 40000), ("2001:db8::2", 995), len(header), 2)


def test_v2_tlvs_skipped() -> None:
    tlvs = b"\x01\x00\x04pop3" + b"\x04\x00\x00"  # ALPN, NOOP
    header = v2_inet("192.0.2.7", "192.0.2.8", 1234, 110, tlvs)
    result = parse(header + POP)
    assert isinstance(result, ProxyResult)
    assert result.source == ("192.0.2.7", 1234)
    assert result.consumed == len(header)


def test_v2_local_ignores_addresses() -> None:
    header = v2(0x0, 0x11, b"\x00" * 12)
    assert parse(header) == ProxyResult(None, None, len(header), 2, local=True)
    assert parse(v2(0x0, 0x00, b"")) == ProxyResult(None, None, 16, 2, local=True)


def test_v2_unspec_and_unix_have_no_source() -> None:
    assert parse(v2(0x1, 0x00, b"")) == ProxyResult(None, None, 16, 2)
    assert parse(v2(0x1, 0x31, b"\x00" * 216)) == ProxyResult(None, None, 232, 2)


def test_v2_oversize_refused_before_buffering() -> None:
    header = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, V2_MAX_PAYLOAD + 1)
    with pytest.raises(ProxyError):
        parse(header)
    assert isinstance(parse(V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, 500)), NeedMore)


@pytest.mark.parametrize(
    "header",
    [
        V2_SIGNATURE + struct.pack("!BBH", 0x11, 0x11, 12) + b"\x00" * 12,  # version 1 in v2
        V2_SIGNATURE + struct.pack("!BBH", 0x22, 0x11, 12) + b"\x00" * 12,  # command 2
        v2(0x1, 0x11, b"\x00" * 11),  # address block too short
        v2(0x1, 0x21, b"\x00" * 12),  # INET6 needs 36
        v2(0x1, 0x12, b"\x00" * 12),  # UDP
        v2(0x1, 0x10, b"\x00" * 12),  # unspecified transport
        v2(0x1, 0x41, b"\x00" * 12),  # unknown family
        v2(0x1, 0x31, b"\x00" * 100),  # short AF_UNIX block
    ],
)
def test_v2_malformed(header: bytes) -> None:
    with pytest.raises(ProxyError):
        parse(header)


# -- neither -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [b"USER alice\r\n", b"proxy TCP4", b"\r\n\r\n\x01", b"PROXX", b"\x16\x03\x01"]
)
def test_garbage(data: bytes) -> None:
    with pytest.raises(ProxyError):
        parse(data)


@pytest.mark.parametrize("data", [b"", b"P", b"PROXY", b"\r\n\r\n\x00\r\nQUI"])
def test_prefixes_need_more(data: bytes) -> None:
    assert isinstance(parse(data), NeedMore)
