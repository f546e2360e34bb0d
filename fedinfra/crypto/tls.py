"""TLS and SuperNode-authentication key material for a consortium (X.509, EC, OpenSSH).

The coordinator's SuperLink serves HTTPS; every site pins the consortium's own CA rather
than the public Web PKI, so a certificate bought from any public CA cannot impersonate the
coordinator. Choices and their sources:

* CA and server keys are ECDSA P-384 (NIST SP 800-57 Part 1 Rev. 5, table 2: 192-bit
  strength; CNSA suite), certificates are X.509 v3 profiled per RFC 5280: the CA has
  ``basicConstraints cA=TRUE, pathLen=0`` and ``keyUsage keyCertSign|cRLSign``
  (sections 4.2.1.9, 4.2.1.3); the server certificate is an end entity with
  ``extendedKeyUsage serverAuth`` (4.2.1.12) and its names only in ``subjectAltName``
  (4.2.1.6; RFC 6125 section 6.4.4: clients ignore the CN when SANs are present).
* Serial numbers are 159 random bits from the OS CSPRNG (CA/Browser Forum Baseline
  Requirements 7.1: at least 64 bits of CSPRNG output).
* SuperNode authentication keys are EC P-384 in OpenSSH format: Flower 1.41 loads the
  private key with ``load_ssh_private_key`` and accepts only NIST curves for the public key
  it registers (``flwr supernode register``).

Only this module of :mod:`fedinfra.crypto` builds certificates; callers get PEM bytes.
Time is injected (``now``) so tests can issue expired certificates deterministically.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedinfra.errors import ConfigError

_CURVE = ec.SECP384R1()
_HASH = hashes.SHA384()
_BACKDATE = dt.timedelta(minutes=5)  # tolerate small clock skew between hosts


@dataclass(frozen=True)
class PemPair:
    """A certificate (or public key) and its private key, both serialised."""

    public: bytes
    private: bytes


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.UTC)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san_entry(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def generate_ca(common_name: str, *, valid_days: int = 1825, now: dt.datetime | None = None) -> PemPair:
    """Create a self-signed consortium CA; return its certificate and key as PEM."""
    if valid_days < 1:
        raise ConfigError("CA validity must be at least one day")
    key = ec.generate_private_key(_CURVE)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = _now(now) - _BACKDATE
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, _HASH)
    )
    return PemPair(cert.public_bytes(serialization.Encoding.PEM), _private_pem(key))


def issue_server_certificate(
    ca: PemPair,
    *,
    common_name: str,
    sans: list[str],
    valid_days: int = 365,
    now: dt.datetime | None = None,
) -> PemPair:
    """Issue the coordinator's TLS certificate for ``sans`` (DNS names or IP addresses)."""
    if not sans:
        raise ConfigError("a server certificate needs at least one subject alternative name")
    if valid_days < 1:
        raise ConfigError("certificate validity must be at least one day")
    ca_cert = x509.load_pem_x509_certificate(ca.public)
    ca_key = serialization.load_pem_private_key(ca.private, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError("the CA key is not an EC key")
    key = ec.generate_private_key(_CURVE)
    start = _now(now) - _BACKDATE
    end = min(start + dt.timedelta(days=valid_days), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([_san_entry(n) for n in sans]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, _HASH)
    )
    return PemPair(cert.public_bytes(serialization.Encoding.PEM), _private_pem(key))


def generate_node_auth_key() -> PemPair:
    """A SuperNode authentication key pair: EC P-384, OpenSSH public and private format."""
    key = ec.generate_private_key(_CURVE)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    return PemPair(public + b"\n", private)


def node_auth_public_key(private_openssh: bytes) -> bytes:
    """The OpenSSH public line of a SuperNode authentication private key."""
    try:
        key = serialization.load_ssh_private_key(private_openssh, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError("SuperNode auth key is not an OpenSSH private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError("SuperNode auth key is not an EC key (Flower needs a NIST curve)")
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"


def load_node_auth_public_key(path: Path) -> bytes:
    """Read and check a SuperNode authentication public key (one OpenSSH line)."""
    try:
        data = path.read_bytes()
        key = serialization.load_ssh_public_key(data.strip())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read SuperNode public key ({exc.strerror})") from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not an OpenSSH public key; re-provision the site kit") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError(f"{path}: not an EC public key; Flower needs a NIST curve (P-384)")
    return data


def public_key_der(key: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of a PEM or OpenSSH public key (``b""`` if unreadable).

    Flower's SuperLink reports a node's key as PEM; the coordinator kit pins it in the
    OpenSSH format Flower registers: comparing both needs one canonical encoding.
    """
    loaders = (serialization.load_pem_public_key, serialization.load_ssh_public_key)
    for load in loaders:
        try:
            public = load(key.strip())
        except (ValueError, TypeError):
            continue
        return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return b""


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read certificate ({exc.strerror})") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: not a PEM X.509 certificate") from exc


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *(str(a) for a in san.get_values_for_type(x509.IPAddress))]


def check_ca(ca_path: Path, *, now: dt.datetime | None = None) -> x509.Certificate:
    """Load the CA certificate and check it is a CA within its validity window."""
    ca = _load_cert(ca_path)
    _check_window(ca, ca_path, _now(now))
    try:
        bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise ConfigError(f"{ca_path}: not a CA certificate; use the ca.crt of the consortium kit")
    return ca


def _check_window(cert: x509.Certificate, path: Path, now: dt.datetime) -> None:
    if now < cert.not_valid_before_utc:
        start = f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M}"
        raise ConfigError(f"{path}: certificate not valid before {start} UTC; check the clock")
    if now > cert.not_valid_after_utc:
        end = f"{cert.not_valid_after_utc:%Y-%m-%d}"
        raise ConfigError(f"{path}: certificate expired on {end}; re-provision with 'fedinfra keys init --force'")


def check_server_certificate(
    cert_path: Path, key_path: Path, ca_path: Path, *, host: str | None = None, now: dt.datetime | None = None
) -> list[str]:
    """Check the coordinator's certificate before serving with it; return its SANs.

    The certificate must be inside its validity window, signed by the CA in ``ca_path``,
    match the private key in ``key_path`` and, if ``host`` is given, name it in its SANs
    (RFC 6125 section 6). A wrong certificate fails here with one line naming the cause,
    not later as an opaque TLS handshake error at every site.
    """
    t = _now(now)
    ca = check_ca(ca_path, now=t)
    cert = _load_cert(cert_path)
    _check_window(cert, cert_path, t)
    ca_key = ca.public_key()
    if not isinstance(ca_key, ec.EllipticCurvePublicKey) or cert.issuer != ca.subject:
        raise ConfigError(_not_issued(cert_path, ca_path))
    try:
        ca_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(_signature_hash(cert)))
    except InvalidSignature as exc:
        raise ConfigError(_not_issued(cert_path, ca_path)) from exc
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"{key_path}: cannot read TLS key ({exc.strerror})") from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key_path}: not an unencrypted PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise ConfigError(f"{key_path}: does not match the certificate {cert_path}; use the pair from the same kit")
    names = _names(cert)
    if host is not None and not _host_matches(host, names):
        raise ConfigError(
            f"{cert_path}: certificate names {names} but the server is reached as {host!r}; "
            "add it to coordinator.sans and re-provision"
        )
    return names


def _not_issued(cert_path: Path, ca_path: Path) -> str:
    return f"{cert_path}: not issued by the CA in {ca_path}; use certificates from the same kit"


def _signature_hash(cert: x509.Certificate) -> hashes.HashAlgorithm:
    algo = cert.signature_hash_algorithm
    if algo is None:
        raise ConfigError("certificate has no signature hash algorithm")
    return algo


def _host_matches(host: str, names: list[str]) -> bool:
    host = host.strip("[]").lower()
    if host in (n.lower() for n in names):
        return True
    return any(n.startswith("*.") and host.split(".", 1)[-1] == n[2:].lower() for n in names)


__all__ = [
    "PemPair",
    "check_ca",
    "check_server_certificate",
    "generate_ca",
    "generate_node_auth_key",
    "issue_server_certificate",
    "load_node_auth_public_key",
    "node_auth_public_key",
    "public_key_der",
]
