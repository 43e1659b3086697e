"""The federation's certificates: a CA, director/envoy/user certificates, and mutual-TLS
credentials for gRPC.

Who is who is decided by certificates alone. Every certificate this module issues carries

* the participant's exact name as the subject common name (CN) — any characters, ``New York``
  or ``intel@lab_5`` alike; and
* its kind in a URI subject-alternative name ``fedloom:<kind>:<percent-encoded name>`` (and,
  for people reading it with other tools, as the subject's organizational unit).

Keys are EC P-256, signatures ECDSA-SHA256, which gRPC's TLS (BoringSSL) accepts everywhere.
The director's certificate also names the hosts envoys and users dial (DNS or IP SANs).

Files in a PKI directory::

    ca.crt, ca.key                      the federation CA (fx pki init)
    <kind>-<safe name>.crt/.key         one participant (fx pki issue); keys are mode 0600
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import tempfile
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal, get_args
from urllib.parse import quote, unquote

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedloom.errors import FedloomError

Kind = Literal["director", "envoy", "user"]
KINDS: tuple[str, ...] = get_args(Kind)

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
URI_SCHEME = "fedloom"
MAX_NAME_LENGTH = 64  # X.509's upper bound for a common name
DEFAULT_DIRECTOR_HOSTS = ("localhost", "127.0.0.1")
_CLOCK_SKEW = timedelta(minutes=5)  # certificates are valid from a little before "now"
_CHAIN_DEPTH = 8
_SAN_PREFIXES = {"DNSName": "DNS", "IPAddress": "IP", "UniformResourceIdentifier": "URI"}


class PkiError(FedloomError):
    """A certificate or key could not be made, read, or trusted."""


class TlsFilesError(PkiError):
    """One of the TLS files (root CA, certificate, private key) is missing or wrong.
    ``path`` is the file at fault."""

    def __init__(self, path: Path, message: str) -> None:
        self.path = path
        super().__init__(message)


@dataclass(frozen=True)
class CertPaths:
    """A certificate and its private key, as written."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class TlsFiles:
    """What a node presents on the wire: ``-rc`` root CA, ``-oc`` certificate, ``-pk`` key."""

    root_ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class CertificateInfo:
    """What ``fx pki show`` prints about a certificate."""

    name: str
    subject: str
    issuer: str
    kind: str | None  # director/envoy/user, or None
    is_ca: bool
    serial: int
    not_before: datetime
    not_after: datetime
    sans: tuple[str, ...]
    fingerprint_sha256: str

    @property
    def expired(self) -> bool:
        return datetime.now(timezone.utc) > self.not_after


# --- names -------------------------------------------------------------------------------------


def validate_name(name: str) -> str:
    """``name`` if it can be a certificate name; a :class:`PkiError` saying why not otherwise."""
    if not name:
        raise PkiError("a certificate name cannot be empty: give --name NAME")
    if len(name) > MAX_NAME_LENGTH:
        raise PkiError(f"the name {name!r} has {len(name)} characters; a certificate name can "
                       f"have at most {MAX_NAME_LENGTH}: choose a shorter one")
    if name != name.strip():
        raise PkiError(f"the name {name!r} starts or ends with white space, which would make "
                       "two names look alike: remove it")
    bad = [c for c in name if unicodedata.category(c) in ("Cc", "Cs")]
    if bad:
        raise PkiError(f"the name {name!r} contains control characters ({bad[0]!r}): use "
                       "printable characters only")
    return name


def safe_filename(name: str) -> str:
    """``name`` as a portable file-name part: anything but letters, digits, ``_.-`` becomes
    ``_`` (the exact name stays in the certificate)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _kind_uri(kind: str, name: str) -> str:
    return f"{URI_SCHEME}:{kind}:{quote(name, safe='')}"


# --- making certificates -----------------------------------------------------------------------


def create_ca(directory: Path, name: str = "fedloom federation CA", days: int = 3650,
              force: bool = False) -> CertPaths:
    """Create the federation CA in ``directory``: ``ca.key`` (0600) and a self-signed
    ``ca.crt`` valid for ``days``. Refuses to replace an existing CA unless ``force``."""
    directory = Path(directory)
    validate_name(name)
    _check_days(days)
    paths = CertPaths(directory / CA_CERT, directory / CA_KEY)
    _refuse_overwrite(paths, force, "a federation CA",
                      "every certificate it issued would stop being trusted")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(paths, cert, key)
    return paths


def issue_certificate(directory: Path, kind: Kind, name: str, hosts: Sequence[str] = (),
                      days: int = 825, force: bool = False) -> CertPaths:
    """Issue a ``kind`` certificate for ``name``, signed by the CA in ``directory``, as
    ``<kind>-<safe name>.crt/.key`` there. Director certificates name ``hosts`` (default
    localhost and 127.0.0.1) so clients can verify them; envoy and user certificates take no
    hosts. Validity is ``days``, cut to the CA's own end. Refuses to overwrite unless ``force``."""
    directory = Path(directory)
    if kind not in KINDS:
        raise PkiError(f"unknown certificate kind {kind!r}: use one of {', '.join(KINDS)}")
    validate_name(name)
    _check_days(days)
    if kind != "director" and hosts:
        raise PkiError(f"{kind} certificates name no hosts ({', '.join(hosts)} given): only "
                       "the director listens; drop --host")
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(_kind_uri(kind, name))]
    if kind == "director":
        sans = [*_host_names(hosts or DEFAULT_DIRECTOR_HOSTS), *sans]
    ca_cert, ca_key = _load_ca(directory)
    stem = f"{kind}-{safe_filename(name)}"
    paths = CertPaths(directory / f"{stem}.crt", directory / f"{stem}.key")
    _refuse_overwrite(paths, force, f"a certificate for {kind} {name!r}", None, name)
    now = datetime.now(timezone.utc)
    not_after = min(now + timedelta(days=days), ca_cert.not_valid_after_utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _build_leaf(ca_cert, ca_key, key, kind, name, sans, now - _CLOCK_SKEW, not_after)
    _write(paths, cert, key)
    return paths


def _build_leaf(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
                key: ec.EllipticCurvePrivateKey, kind: str, name: str,
                sans: Sequence[x509.GeneralName], not_before: datetime,
                not_after: datetime) -> x509.Certificate:
    """A leaf certificate with explicit validity (tests use it to make expired ones)."""
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if kind == "director":
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _check_days(days: int) -> None:
    if days < 1:
        raise PkiError(f"a certificate must be valid for at least 1 day ({days} given): "
                       "pass --days 1 or more")


def _host_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        host = host.strip()
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        try:
            dns = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise PkiError(f"{host!r} is neither an IP address nor a valid host name: give the "
                           "name or address envoys and users dial (--host)") from None
        if not dns or not re.fullmatch(r"(\*\.)?[A-Za-z0-9_.-]+", dns):
            raise PkiError(f"{host!r} is neither an IP address nor a valid host name: give the "
                           "name or address envoys and users dial (--host)")
        names.append(x509.DNSName(dns))
    return names


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    for path in (cert_path, key_path):
        if not path.is_file():
            raise PkiError(f"there is no federation CA in {directory} ({path.name} is "
                           f"missing): create one with 'fx pki init --dir {directory}', or "
                           "point --dir at the directory that holds ca.crt and ca.key")
    cert = _read_certificates(cert_path, "CA certificate")[0]
    key = _read_key(key_path, "CA private key")
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TlsFilesError(key_path, f"{key_path}: the CA key is not an EC key; fedloom "
                            "signs with EC P-256: create the CA with 'fx pki init'")
    if not _same_public_key(cert, key):
        raise TlsFilesError(key_path, f"{key_path} is not the key of {cert_path}: restore the "
                            "matching pair, or create a new CA with 'fx pki init --force'")
    if not _is_ca(cert):
        raise TlsFilesError(cert_path, f"{cert_path} is not a CA certificate: create the CA "
                            "with 'fx pki init'")
    if cert.not_valid_after_utc <= datetime.now(timezone.utc):
        raise TlsFilesError(cert_path, f"the CA certificate {cert_path} expired on "
                            f"{cert.not_valid_after_utc:%Y-%m-%d}: create a new CA with "
                            "'fx pki init --force' and reissue every certificate")
    return cert, key


def _refuse_overwrite(paths: CertPaths, force: bool, what: str, consequence: str | None,
                      name: str | None = None) -> None:
    existing = [p for p in (paths.cert, paths.key) if p.exists()]
    if force or not existing:
        return
    files = " and ".join(str(p) for p in existing)
    holder = ""
    if name is not None and paths.cert.is_file():
        try:
            other = certificate_name(paths.cert.read_bytes())
        except (PkiError, OSError):
            other = None
        if other is not None and other != name:
            holder = (f" (it holds the certificate of {other!r}, whose file name is the same "
                      f"as {name!r}'s)")
    why = f"; replacing it means {consequence}" if consequence else ""
    raise PkiError(f"{files} already exist{'s' if len(existing) == 1 else ''}{holder}: "
                   f"not replacing {what}{why}. Pass --force to replace, or use another "
                   "directory")


def _write(paths: CertPaths, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    """Write the key (0600) then the certificate, each atomically."""
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    try:
        paths.cert.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_file(paths.key, key_pem, 0o600)
        _write_file(paths.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except OSError as exc:
        where = exc.filename or paths.cert.parent
        raise PkiError(f"cannot write the certificate files in {paths.cert.parent} ({where}: "
                       f"{exc.strerror}): check that the directory is writable, or choose "
                       "another --dir") from None


def _write_file(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # mkstemp makes it 0600; a certificate may be world-readable
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- reading certificates ----------------------------------------------------------------------


def _parse_pem_certificate(cert_pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise PkiError(f"not a PEM certificate: {exc}") from None


def _common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return None
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _kind_of(cert: x509.Certificate) -> str | None:
    if _is_ca(cert):
        return None
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    name = _common_name(cert)
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        scheme, _, rest = uri.partition(":")
        kind, _, encoded = rest.partition(":")
        if scheme == URI_SCHEME and kind in KINDS and unquote(encoded) == name:
            return kind
    return None


def certificate_name(cert_pem: bytes) -> str:
    """The subject common name of a PEM certificate: the participant's exact name."""
    cert = _parse_pem_certificate(cert_pem)
    name = _common_name(cert)
    if name is None:
        raise PkiError(f"the certificate of {cert.subject.rfc4514_string() or 'no subject'} "
                       "has no common name (CN): issue fedloom certificates with 'fx pki issue'")
    return name


def certificate_kind(cert_pem: bytes) -> str | None:
    """``director``, ``envoy`` or ``user`` for a certificate fedloom issued; None for a CA or
    a certificate without fedloom's ``fedloom:<kind>:<name>`` URI."""
    return _kind_of(_parse_pem_certificate(cert_pem))


def describe_certificate(cert_pem: bytes) -> CertificateInfo:
    """Everything ``fx pki show`` prints about a PEM certificate."""
    return _describe(_parse_pem_certificate(cert_pem))


def describe_certificate_file(path: Path) -> CertificateInfo:
    """:func:`describe_certificate` of the (first) certificate in the PEM file ``path``; a
    :class:`TlsFilesError` naming the file if it is missing or not a certificate."""
    return _describe(_read_certificates(Path(path), "certificate")[0])


def _describe(cert: x509.Certificate) -> CertificateInfo:
    sans: list[str] = []
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        for general in ext:
            sans.append(f"{_SAN_PREFIXES.get(type(general).__name__, 'other')}:{general.value}")
    return CertificateInfo(
        name=_common_name(cert) or "",
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        kind=_kind_of(cert),
        is_ca=_is_ca(cert),
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        sans=tuple(sans),
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(":"),
    )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _same_public_key(cert: x509.Certificate, key: object) -> bool:
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    public = key.public_key() if hasattr(key, "public_key") else None
    if public is None:
        return False
    mine: bytes = public.public_bytes(*spki)
    return mine == cert.public_key().public_bytes(*spki)


# --- TLS files ---------------------------------------------------------------------------------


def _read(path: Path, what: str) -> bytes:
    path = Path(path)
    if not path.exists():
        raise TlsFilesError(path, f"the {what} {path} does not exist: check the path, or make "
                            "it with 'fx pki'")
    if not path.is_file():
        raise TlsFilesError(path, f"the {what} {path} is not a file: point at the PEM file "
                            "itself")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsFilesError(path, f"cannot read the {what} {path}: {exc.strerror}; check its "
                            "permissions") from None


def _read_certificates(path: Path, what: str) -> list[x509.Certificate]:
    return _load_certificates(path, what)[1]


def _load_certificates(path: Path, what: str) -> tuple[bytes, list[x509.Certificate]]:
    data = _read(path, what)
    if b"PRIVATE KEY-----" in data and b"CERTIFICATE-----" not in data:
        raise TlsFilesError(path, f"the {what} {path} is a private key, not a certificate: "
                            "point at the .crt file (were the certificate and key swapped?)")
    if b"-----BEGIN" not in data:
        raise TlsFilesError(path, f"the {what} {path} is not a PEM file (no '-----BEGIN' "
                            "line): give the .crt written by 'fx pki' (a DER file converts with "
                            "'openssl x509 -inform der -in FILE -out FILE.pem')")
    try:
        return data, x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TlsFilesError(path, f"the {what} {path} is not a valid PEM certificate ({exc}): "
                            "replace it with the .crt written by 'fx pki'") from None


def _read_key(path: Path, what: str) -> object:
    return _load_key(path, what)[1]


def _load_key(path: Path, what: str) -> tuple[bytes, object]:
    data = _read(path, what)
    if b"CERTIFICATE-----" in data and b"PRIVATE KEY-----" not in data:
        raise TlsFilesError(path, f"the {what} {path} is a certificate, not a private key: "
                            "point at the .key file (were the certificate and key swapped?)")
    try:
        return data, serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TlsFilesError(path, f"the {what} {path} is encrypted with a passphrase; gRPC "
                            "needs an unencrypted key: decrypt it with 'openssl pkey -in FILE "
                            "-out FILE.key' and keep it mode 0600") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TlsFilesError(path, f"the {what} {path} is not a valid PEM private key ({exc}): "
                            "give the .key written by 'fx pki' next to the certificate") from None


def _check_validity(cert: x509.Certificate, path: Path, what: str, now: datetime) -> None:
    if cert.not_valid_after_utc <= now:
        raise TlsFilesError(path, f"the {what} {path} expired on "
                            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: issue a new one "
                            "with 'fx pki issue' (or 'fx pki init' for the CA)")
    if cert.not_valid_before_utc > now + _CLOCK_SKEW:
        raise TlsFilesError(path, f"the {what} {path} is not valid before "
                            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC: check this "
                            "machine's clock")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def load_tls_files(files: TlsFiles) -> tuple[bytes, bytes, bytes]:
    """``(root CA, certificate, key)`` PEM bytes for gRPC, after checking that each file exists
    and parses, that the key is the certificate's, that the root CA signed the certificate
    (directly or through intermediates in the certificate file), and that nothing expired.
    Each failure is a :class:`TlsFilesError` naming the file and how to fix it."""
    now = datetime.now(timezone.utc)
    root_pem, roots = _load_certificates(files.root_ca, "root CA certificate")
    cert_pem, chain = _load_certificates(files.cert, "certificate")
    key_pem, key = _load_key(files.key, "private key")
    for candidate in roots:
        if not _is_ca(candidate):
            who = _common_name(candidate) or candidate.subject.rfc4514_string()
            raise TlsFilesError(files.root_ca, f"the root CA certificate {files.root_ca} is not "
                                f"a CA certificate (it is the certificate of {who!r}): point "
                                "-rc at the federation's ca.crt")
    leaf = chain[0]
    if not _same_public_key(leaf, key):
        raise TlsFilesError(files.key, f"the private key {files.key} does not belong to the "
                            f"certificate {files.cert}: give the .key issued together with that "
                            ".crt")
    current, hops = leaf, 0
    root: x509.Certificate | None
    while (root := next((r for r in roots if _issued_by(current, r)), None)) is None:
        parent = next((c for c in chain[1:] if _issued_by(current, c)), None)
        hops += 1
        if parent is None or hops > _CHAIN_DEPTH:
            cert_name = _common_name(leaf) or leaf.subject.rfc4514_string()
            raise TlsFilesError(files.cert, f"the certificate {files.cert} ({cert_name!r}, "
                                f"issued by {leaf.issuer.rfc4514_string()}) was not signed by "
                                f"the root CA {files.root_ca} "
                                f"({roots[0].subject.rfc4514_string()}): issue it from this "
                                "federation's CA with 'fx pki issue', or point -rc at the CA "
                                "that issued it")
        current = parent
    _check_validity(root, files.root_ca, "root CA certificate", now)
    for cert in chain:
        _check_validity(cert, files.cert, "certificate", now)
    return root_pem, cert_pem, key_pem


def _require_usage(files: TlsFiles, cert_pem: bytes, usage: x509.ObjectIdentifier,
                   role: str, fix: str) -> None:
    cert = x509.load_pem_x509_certificates(cert_pem)[0]
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if usage not in eku:
        kind = _kind_of(cert)
        what = f"a {kind} certificate" if kind else "a certificate"
        raise TlsFilesError(files.cert, f"the certificate {files.cert} is {what} that cannot "
                            f"act as a TLS {role}: {fix}")


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Credentials for the director's port: its certificate, and client certificates required
    and verified against the root CA (mutual TLS)."""
    root, cert, key = load_tls_files(files)
    _require_usage(files, cert, ExtendedKeyUsageOID.SERVER_AUTH, "server",
                   "start the director with a director certificate "
                   "('fx pki issue --kind director')")
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=root,
                                       require_client_auth=True)


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """Credentials for dialing the director: trust the root CA, present our certificate."""
    root, cert, key = load_tls_files(files)
    _require_usage(files, cert, ExtendedKeyUsageOID.CLIENT_AUTH, "client",
                   "issue an envoy or user certificate with 'fx pki issue'")
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key,
                                        certificate_chain=cert)


# --- who is calling ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=8192)  # one entry per peer: a federation of thousands
def _identity(cert_pem: bytes) -> tuple[str | None, str | None]:
    try:
        cert = _parse_pem_certificate(cert_pem)
    except PkiError:
        return None, None
    return _common_name(cert), _kind_of(cert)


def _peer_identity(context: grpc.ServicerContext) -> tuple[str | None, str | None]:
    auth = context.auth_context() or {}
    if b"ssl" not in auth.get("transport_security_type", []):
        return None, None
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        return None, None
    return _identity(bytes(pems[0]))


def peer_name(context: grpc.ServicerContext) -> str | None:
    """The exact name (certificate CN) of the client calling this RPC, as verified by mutual
    TLS; None on a plaintext connection or when the client sent no certificate."""
    return _peer_identity(context)[0]


def peer_kind(context: grpc.ServicerContext) -> str | None:
    """``director``/``envoy``/``user`` from the calling client's certificate; None on a
    plaintext connection or for a certificate fedloom did not issue."""
    return _peer_identity(context)[1]


def peer_not_after(context: grpc.ServicerContext) -> float | None:
    """When the calling client's certificate expires (seconds since the epoch), as mutual TLS
    verified it; None on a plaintext connection."""
    auth = context.auth_context() or {}
    pems = auth.get("x509_pem_cert") or []
    return _not_after(bytes(pems[0])) if pems else None


@functools.lru_cache(maxsize=8192)  # one entry per peer: a federation of thousands
def _not_after(cert_pem: bytes) -> float | None:
    try:
        return _parse_pem_certificate(cert_pem).not_valid_after_utc.timestamp()
    except PkiError:
        return None


def expires_soon(path: Path, days: int = 30) -> str:
    """A warning when the certificate in ``path`` expires within ``days`` (or has expired);
    '' otherwise (or when it cannot be read: loading it says why)."""
    try:
        info = describe_certificate_file(path)
    except PkiError:
        return ""
    left = info.not_after - datetime.now(timezone.utc)
    if left > timedelta(days=days):
        return ""
    when = f"{info.not_after:%Y-%m-%d %H:%M} UTC"
    if left.total_seconds() <= 0:
        return f"the certificate {path} ('{info.name}') expired on {when}"
    return (f"the certificate {path} ('{info.name}') expires on {when}, in {left.days} days: "
            f"issue a new one (fx pki issue --kind {info.kind or '...'} --name '{info.name}' "
            f"--force) and restart with it before then")
