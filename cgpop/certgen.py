"""Self-signed certificate and key for testing (`cgpop cert --host NAME --out DIR`; also the
test suite's and the benchmark's one certificate builder).

An EC P-256 key and a certificate whose subjectAltName names the host (RFC 6125 section 6.4.4:
clients match the SAN, not the CN), written as PEM. The key file is created 0600 from the start,
never widened and narrowed afterwards.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_NAME = "cert.pem"
KEY_NAME = "key.pem"
# RFC 1035 section 2.3.4: a DNS name is at most 255 octets (253 in presentation form), and
# RFC 5280 caps the validity a relying party must accept well above 100 years; 10 years is
# plenty for a test certificate.
MAX_HOST_LEN = 253
MAX_DAYS = 3650


def _host_names(host: str) -> tuple[list[x509.GeneralName], str]:
    """SAN entries and the CN for `host`: an IP gets an iPAddress entry (and a DNS entry with
    its text, which some old clients look at), a name gets a DNS entry in A-label form."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        return [x509.IPAddress(ip), x509.DNSName(str(ip))], str(ip)
    try:
        # IDNA 2003 via the stdlib codec: enough to turn a U-label into the ASCII form X.509 needs.
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise ValueError(f"not a valid host name: {host!r}") from exc
    labels = ascii_host.rstrip(".").split(".")
    if not all(0 < len(lab) <= 63 and all(c.isalnum() or c in "-*" for c in lab) for lab in labels):
        raise ValueError(f"not a valid host name: {host!r}")
    return [x509.DNSName(ascii_host.rstrip("."))], ascii_host.rstrip(".")


def write_self_signed(
    host: str, out_dir: Path, days: int = 365, *, also: Sequence[str] = ()
) -> tuple[Path, Path]:
    """Write `cert.pem` and `key.pem` for `host` (and the names or addresses in `also`, as
    further subjectAltNames) into `out_dir` (created if missing) and return (cert_path,
    key_path). Overwrites an existing pair. Raises ValueError for a bad host or days.
    """
    for given in (host, *also):
        if not given or len(given) > MAX_HOST_LEN:
            raise ValueError("host must be 1 to 253 characters")
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be between 1 and {MAX_DAYS}")
    sans, common_name = _host_names(host)
    for extra in also:
        sans += _host_names(extra)[0]

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        # A little slack for clients whose clock is behind.
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        # Self-signed and used as its own trust anchor: CA true so strict verifiers (Python 3.13's
        # VERIFY_X509_STRICT) accept it when a client adds it to its trust store.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    cert_path = out_dir / CERT_NAME
    key_path = out_dir / KEY_NAME
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    # O_CREAT's mode applies only to a new file: tighten an existing one too.
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
