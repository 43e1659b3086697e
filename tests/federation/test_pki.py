"""The federation's certificates and mutual TLS, over real gRPC on 127.0.0.1."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedloom.errors import FedloomError
from fedloom.federation import pki
from fedloom.federation.pki import (
    CertPaths,
    PkiError,
    TlsFiles,
    TlsFilesError,
    certificate_kind,
    certificate_name,
    channel_credentials,
    create_ca,
    issue_certificate,
    load_tls_files,
    peer_kind,
    peer_name,
    server_credentials,
)
from fedloom.federation.pki_cli import pki as pki_cli

ENVOYS = ["New York", "intel@lab_5", "newDelhi$+7", "Zürich"]
RPC = "/fedloom.test.Echo/Who"
TIMEOUT = 5.0


@dataclass
class Pki:
    dir: Path
    ca: CertPaths
    director: CertPaths
    envoys: dict[str, CertPaths]
    user: CertPaths
    other_dir: Path  # a second, unrelated federation
    other_ca: CertPaths
    other_envoy: CertPaths

    def files(self, paths: CertPaths, root: CertPaths | None = None) -> TlsFiles:
        return TlsFiles((root or self.ca).cert, paths.cert, paths.key)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    main, other = base / "main", base / "other"
    ca = create_ca(main)
    director = issue_certificate(main, "director", "director", hosts=["localhost", "127.0.0.1"])
    envoys = {name: issue_certificate(main, "envoy", name) for name in ENVOYS}
    user = issue_certificate(main, "user", "alice")
    other_ca = create_ca(other, name="someone else's CA")
    other_envoy = issue_certificate(other, "envoy", "New York")
    return Pki(main, ca, director, envoys, user, other, other_ca, other_envoy)


# --- a tiny echo service: who does the server think is calling? ------------------------------


def _who(request: bytes, context: grpc.ServicerContext) -> bytes:
    return f"{peer_name(context)}\n{peer_kind(context)}".encode()


def _serve(credentials: grpc.ServerCredentials | None) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "fedloom.test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(_who)})
    server.add_generic_rpc_handlers((handler,))
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    assert port
    server.start()
    return server, port


@pytest.fixture(scope="module")
def tls_port(certs: Pki) -> Iterator[int]:
    server, port = _serve(server_credentials(certs.files(certs.director)))
    yield port
    server.stop(None)


def _call(channel: grpc.Channel) -> tuple[str, str]:
    reply = channel.unary_unary(RPC)(b"", timeout=TIMEOUT)
    name, kind = reply.decode().split("\n")
    return name, kind


def _call_fails(channel: grpc.Channel) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(RPC)(b"", timeout=TIMEOUT)
    # refused at the handshake, not left hanging until the deadline
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value
    return caught.value


# --- mutual TLS ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ENVOYS)
def test_the_server_sees_the_envoys_exact_name_and_kind(certs: Pki, tls_port: int,
                                                        name: str) -> None:
    credentials = channel_credentials(certs.files(certs.envoys[name]))
    with grpc.secure_channel(f"127.0.0.1:{tls_port}", credentials) as channel:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        assert _call(channel) == (name, "envoy")


def test_a_user_is_the_name_on_their_certificate_and_localhost_verifies(
        certs: Pki, tls_port: int) -> None:
    credentials = channel_credentials(certs.files(certs.user))
    with grpc.secure_channel(f"localhost:{tls_port}", credentials) as channel:
        assert _call(channel) == ("alice", "user")


def test_a_client_certificate_from_another_ca_is_refused(certs: Pki, tls_port: int) -> None:
    # trusts our director, but presents a certificate our CA never issued
    credentials = grpc.ssl_channel_credentials(
        root_certificates=certs.ca.cert.read_bytes(),
        private_key=certs.other_envoy.key.read_bytes(),
        certificate_chain=certs.other_envoy.cert.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{tls_port}", credentials) as channel:
        _call_fails(channel)


def test_a_client_without_a_certificate_is_refused(certs: Pki, tls_port: int) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=certs.ca.cert.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{tls_port}", credentials) as channel:
        _call_fails(channel)


def test_a_plaintext_client_to_a_tls_server_fails_fast(tls_port: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{tls_port}") as channel:
        _call_fails(channel)


def test_a_client_does_not_trust_a_director_from_another_federation(
        certs: Pki, tls_port: int) -> None:
    credentials = channel_credentials(certs.files(certs.other_envoy, root=certs.other_ca))
    with grpc.secure_channel(f"127.0.0.1:{tls_port}", credentials) as channel:
        _call_fails(channel)


def test_a_director_certificate_names_only_its_hosts(certs: Pki, tls_port: int) -> None:
    # the right server, verified as a name its certificate does not carry
    credentials = channel_credentials(certs.files(certs.envoys["New York"]))
    options = [("grpc.ssl_target_name_override", "elsewhere.example")]
    with grpc.secure_channel(f"127.0.0.1:{tls_port}", credentials, options=options) as channel:
        _call_fails(channel)
    options = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(f"127.0.0.1:{tls_port}", credentials, options=options) as channel:
        assert _call(channel) == ("New York", "envoy")


def test_plaintext_has_no_peer_name() -> None:
    server, port = _serve(None)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert _call(channel) == ("None", "None")
    finally:
        server.stop(None)


def test_the_director_needs_a_server_certificate(certs: Pki) -> None:
    with pytest.raises(TlsFilesError, match="cannot act as a TLS server") as caught:
        server_credentials(certs.files(certs.envoys["New York"]))
    assert caught.value.path == certs.envoys["New York"].cert
    assert "--kind director" in str(caught.value)


# --- load_tls_files --------------------------------------------------------------------------


def test_load_tls_files_returns_the_pem_bytes(certs: Pki) -> None:
    files = certs.files(certs.user)
    assert load_tls_files(files) == (certs.ca.cert.read_bytes(), certs.user.cert.read_bytes(),
                                     certs.user.key.read_bytes())


def _expect(files: TlsFiles, bad: Path, *phrases: str) -> None:
    with pytest.raises(TlsFilesError) as caught:
        load_tls_files(files)
    message = str(caught.value)
    assert caught.value.path == bad
    assert str(bad) in message
    for phrase in phrases:
        assert phrase in message, message
    assert isinstance(caught.value, FedloomError)


def test_missing_files_are_named(certs: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    _expect(TlsFiles(missing, certs.user.cert, certs.user.key), missing, "does not exist")
    _expect(TlsFiles(certs.ca.cert, missing, certs.user.key), missing, "does not exist")
    _expect(TlsFiles(certs.ca.cert, certs.user.cert, missing), missing, "does not exist")
    _expect(TlsFiles(tmp_path, certs.user.cert, certs.user.key), tmp_path, "not a file")


def test_garbage_files_are_named(certs: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"this is not a certificate\n")
    _expect(TlsFiles(garbage, certs.user.cert, certs.user.key), garbage, "not a PEM file")
    _expect(TlsFiles(certs.ca.cert, garbage, certs.user.key), garbage, "not a PEM file")
    _expect(TlsFiles(certs.ca.cert, certs.user.cert, garbage), garbage, "not a valid PEM")
    broken = tmp_path / "broken.crt"
    broken.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    _expect(TlsFiles(certs.ca.cert, broken, certs.user.key), broken, "not a valid PEM")


def test_swapped_certificate_and_key_are_spotted(certs: Pki) -> None:
    _expect(TlsFiles(certs.ca.cert, certs.user.key, certs.user.cert), certs.user.key,
            "is a private key", "swapped")
    _expect(TlsFiles(certs.ca.cert, certs.user.cert, certs.user.cert), certs.user.cert,
            "is a certificate, not a private key")


def test_a_key_that_is_not_the_certificates(certs: Pki) -> None:
    _expect(TlsFiles(certs.ca.cert, certs.user.cert, certs.director.key), certs.director.key,
            "does not belong to the certificate", str(certs.user.cert))


def test_a_certificate_from_another_ca(certs: Pki) -> None:
    _expect(certs.files(certs.other_envoy), certs.other_envoy.cert,
            "was not signed by the root CA", "someone else's CA")


def test_a_root_that_is_not_a_ca(certs: Pki) -> None:
    _expect(TlsFiles(certs.user.cert, certs.user.cert, certs.user.key), certs.user.cert,
            "not a CA certificate", "'alice'")


def test_an_encrypted_key(certs: Pki, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(certs.user.key.read_bytes(), None)
    encrypted = tmp_path / "enc.key"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    _expect(TlsFiles(certs.ca.cert, certs.user.cert, encrypted), encrypted, "passphrase")


def test_an_expired_certificate(certs: Pki, tmp_path: Path) -> None:
    ca_cert, ca_key = pki._load_ca(certs.dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    cert = pki._build_leaf(ca_cert, ca_key, key, "envoy", "Old Site",
                           [x509.UniformResourceIdentifier("fedloom:envoy:Old%20Site")],
                           now - timedelta(days=30), now - timedelta(days=1))
    paths = CertPaths(tmp_path / "old.crt", tmp_path / "old.key")
    pki._write(paths, cert, key)
    _expect(certs.files(paths), paths.cert, "expired on", "fx pki issue")
    assert certificate_name(paths.cert.read_bytes()) == "Old Site"


# --- what the certificates hold ---------------------------------------------------------------


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_names_stay_exact_and_files_get_safe_names(certs: Pki) -> None:
    for name, paths in certs.envoys.items():
        pem = paths.cert.read_bytes()
        assert certificate_name(pem) == name
        assert certificate_kind(pem) == "envoy"
        assert paths.cert.parent == certs.dir
        assert paths.cert.name.startswith("envoy-") and paths.key.suffix == ".key"
        assert all(c.isascii() and (c.isalnum() or c in "_.-") for c in paths.cert.name)
    assert certs.envoys["New York"].cert.name == "envoy-New_York.crt"
    assert certs.envoys["intel@lab_5"].key.name == "envoy-intel_lab_5.key"
    assert certificate_kind(certs.director.cert.read_bytes()) == "director"
    assert certificate_kind(certs.user.cert.read_bytes()) == "user"
    assert certificate_kind(certs.ca.cert.read_bytes()) is None


def test_keys_are_private(certs: Pki) -> None:
    for paths in [certs.ca, certs.director, certs.user, *certs.envoys.values()]:
        assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600


def test_extensions(certs: Pki) -> None:
    ca = _load(certs.ca.cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value

    director = _load(certs.director.cert)
    assert not director.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = director.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = director.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    aki = director.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    assert isinstance(director.public_key(), ec.EllipticCurvePublicKey)

    envoy = _load(certs.envoys["New York"].cert)
    eku = envoy.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    san = envoy.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "fedloom:envoy:New%20York"]


def test_director_hosts_default_and_validation(tmp_path: Path) -> None:
    create_ca(tmp_path)
    paths = issue_certificate(tmp_path, "director", "director")
    assert pki.describe_certificate_file(paths.cert).sans[:2] == ("DNS:localhost",
                                                                   "IP:127.0.0.1")
    with pytest.raises(PkiError, match="neither an IP address nor a valid host name"):
        issue_certificate(tmp_path, "director", "d2", hosts=["not a host"])
    with pytest.raises(PkiError, match="drop --host"):
        issue_certificate(tmp_path, "envoy", "Portland", hosts=["example.org"])


@pytest.mark.parametrize(("name", "phrase"), [
    ("", "cannot be empty"), ("x" * 65, "at most 64"), (" padded", "white space"),
    ("line\nbreak", "control characters")])
def test_bad_names(tmp_path: Path, name: str, phrase: str) -> None:
    create_ca(tmp_path)
    with pytest.raises(PkiError, match=phrase):
        issue_certificate(tmp_path, "envoy", name)


def test_issuing_needs_a_ca(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="no federation CA") as caught:
        issue_certificate(tmp_path, "envoy", "Portland")
    assert "fx pki init --dir" in str(caught.value)


def test_nothing_is_overwritten_without_force(tmp_path: Path) -> None:
    ca = create_ca(tmp_path)
    before = ca.cert.read_bytes()
    with pytest.raises(PkiError, match=r"already exist.*--force"):
        create_ca(tmp_path)
    assert ca.cert.read_bytes() == before
    assert create_ca(tmp_path, force=True).cert.read_bytes() != before

    first = issue_certificate(tmp_path, "envoy", "New York")
    with pytest.raises(PkiError, match="already exist"):
        issue_certificate(tmp_path, "envoy", "New York")
    # a different name with the same file name is explained, not silently replaced
    with pytest.raises(PkiError, match="holds the certificate of 'New York'"):
        issue_certificate(tmp_path, "envoy", "New/York")
    again = issue_certificate(tmp_path, "envoy", "New/York", force=True)
    assert again == first
    assert certificate_name(again.cert.read_bytes()) == "New/York"


def test_validity_is_cut_to_the_cas(tmp_path: Path) -> None:
    create_ca(tmp_path, days=10)
    paths = issue_certificate(tmp_path, "user", "bob", days=825)
    assert _load(paths.cert).not_valid_after_utc == _load(tmp_path / "ca.crt").not_valid_after_utc
    with pytest.raises(PkiError, match="at least 1 day"):
        issue_certificate(tmp_path, "user", "carol", days=0)


# --- fx pki ------------------------------------------------------------------------------------


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner(env={"COLUMNS": "200"}).invoke(pki_cli, list(args))
    return result.exit_code, result.output


def test_cli_init_issue_show(tmp_path: Path) -> None:
    folder = tmp_path / "fed"
    code, out = _run("init", "--dir", str(folder), "--name", "Acme federation")
    assert code == 0, out
    assert "created the federation CA 'Acme federation'" in out
    assert (folder / "ca.crt").is_file()
    assert stat.S_IMODE((folder / "ca.key").stat().st_mode) == 0o600

    code, out = _run("issue", "--dir", str(folder), "--kind", "envoy", "--name", "intel@lab_5")
    assert code == 0, out
    cert = folder / "envoy-intel_lab_5.crt"
    assert str(cert) in out and certificate_name(cert.read_bytes()) == "intel@lab_5"

    code, out = _run("issue", "--dir", str(folder), "--kind", "director", "--name", "director",
                     "--host", "fed.example.org", "--host", "10.0.0.5", "--days", "30")
    assert code == 0, out
    assert "DNS:fed.example.org" in out and "IP:10.0.0.5" in out

    code, out = _run("show", str(cert))
    assert code == 0, out
    for expected in ("intel@lab_5", "envoy", "CN=Acme federation", "valid",
                     "URI:fedloom:envoy:intel%40lab_5"):
        assert expected in out, out
    code, out = _run("show", str(folder / "ca.crt"))
    assert code == 0 and "federation CA" in out, out
    code, out = _run("show", str(cert), "--json")
    assert code == 0, out
    shown = json.loads(out)
    assert (shown["name"], shown["kind"], shown["expired"]) == ("intel@lab_5", "envoy", False)
    assert shown["not_before"] < time.time() < shown["not_after"]
    assert "URI:fedloom:envoy:intel%40lab_5" in shown["sans"]


def test_cli_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    assert _run("init", "--dir", str(tmp_path))[0] == 0
    code, out = _run("init", "--dir", str(tmp_path))
    assert code == 1 and "already exist" in out and "--force" in out
    assert _run("init", "--dir", str(tmp_path), "--force")[0] == 0

    issue = ("issue", "--dir", str(tmp_path), "--kind", "user", "--name", "alice")
    assert _run(*issue)[0] == 0
    code, out = _run(*issue)
    assert code == 1 and "already exist" in out
    assert _run(*issue, "--force")[0] == 0


def test_cli_errors(tmp_path: Path) -> None:
    code, out = _run("issue", "--dir", str(tmp_path), "--kind", "envoy", "--name", "x")
    assert code == 1 and "fx pki init" in out
    code, out = _run("issue", "--dir", str(tmp_path), "--kind", "admin", "--name", "x")
    assert code == 2 and "admin" in out
    code, out = _run("show", str(tmp_path / "missing.crt"))
    assert code == 1 and "does not exist" in out
    _run("init", "--dir", str(tmp_path))
    code, out = _run("show", str(tmp_path / "ca.key"))
    assert code == 1 and "is a private key" in out
    code, out = _run("init", "--dir", str(tmp_path / "new"), "--days", "0")
    assert code == 2
