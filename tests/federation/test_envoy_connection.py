"""An envoy that cannot connect says why: it stops (exit code 1) when retrying cannot help
(the director's certificate from another CA, TLS on one side only), and keeps retrying with
back-off, saying so, while the director is away or another connection holds its name."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from fedloom.federation.transport.proto import fedloom_pb2_grpc as rpc
from tests.federation.nodes import lone_envoy, make_certificates, unused_port


@pytest.mark.slow
def test_an_envoy_keeps_retrying_while_nothing_listens_until_stopped(tmp_path):
    with unused_port() as nowhere:
        envoy = lone_envoy(tmp_path, "Oslo", nowhere)
        try:
            envoy.wait_for(r"not running \(connection refused\); retrying in [\d.]+ s "
                           r"\(back-off 0\.5 s")
            envoy.wait_for(r"connection refused\); retrying in [\d.]+ s \(back-off 1 s")  # later
            assert envoy.process.poll() is None
        finally:
            envoy.stop()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["certificate-of-another-ca", "plaintext-to-tls",
                                  "tls-to-plaintext"])
def test_an_envoy_stops_with_a_clear_error_when_retrying_cannot_help(tmp_path, request, case):
    # A director's that serves other envoys (this one is refused before it registers).
    fed = request.getfixturevalue("shared_plaintext" if case == "tls-to-plaintext"
                                  else "shared_tls").ready()
    if case == "plaintext-to-tls":
        tls = ["--disable-tls"]
        expected = r"requires TLS \(.*\), and this envoy was started with --disable-tls"
    else:
        certs = make_certificates(tmp_path / "other-pki", ["Oslo"])
        cert, key = certs[("envoy", "Oslo")]
        tls = ["-rc", str(certs[("ca", "")][0]), "-pk", str(key), "-oc", str(cert)]
        expected = (r"was not issued by the root CA" if case != "tls-to-plaintext"
                    else r"does not speak TLS .*started with --disable-tls")
    envoy = lone_envoy(tmp_path, "Oslo", fed.port, tls)
    output = "\n".join(envoy.read_all(timeout=60))
    assert envoy.process.returncode == 1, output
    assert re.search(rf"Error: envoy 'Oslo' cannot connect to the director: .*"
                     rf"127\.0\.0\.1:{fed.port}.*{expected}", output), output


class NameTaken(rpc.DirectorServicer):
    """A director where another live connection holds the envoy's name."""

    def Register(self, request, context):
        context.abort(grpc.StatusCode.ALREADY_EXISTS,
                      f"envoy '{request.name}' is connected from 10.0.0.7:5123")


def test_an_envoy_whose_name_another_connection_holds_says_so_and_keeps_retrying(tmp_path):
    server = grpc.server(ThreadPoolExecutor(2))
    rpc.add_DirectorServicer_to_server(NameTaken(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        envoy = lone_envoy(tmp_path, "Oslo", port)
        try:
            envoy.wait_for(r"the director did not register it: ")
            envoy.wait_for(r"retrying in [\d.]+ s \(back-off 1 s")  # backing off, still there
            assert envoy.process.poll() is None
            assert "envoy 'Oslo' is connected from 10.0.0.7:5123" in "\n".join(envoy.seen)
        finally:
            envoy.stop()
    finally:
        server.stop(0)


@pytest.fixture(scope="module")
def pkis(tmp_path_factory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("pki")
    return make_certificates(folder / "ours", ["Oslo"]), \
        make_certificates(folder / "theirs", ["Oslo"])


@pytest.fixture(params=["tls", "plaintext"])
def director_port(request, pkis):  # type: ignore[no-untyped-def]
    from fedloom.federation.pki import TlsFiles, server_credentials

    ours, _ = pkis
    server = grpc.server(ThreadPoolExecutor(2))
    if request.param == "tls":
        cert, key = ours[("director", "director")]
        port = server.add_secure_port("127.0.0.1:0", server_credentials(
            TlsFiles(ours[("ca", "")][0], cert, key)))
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield request.param, port
    server.stop(0)


def files(pki, kind="envoy", name="Oslo", ca=None):  # type: ignore[no-untyped-def]
    from fedloom.federation.pki import TlsFiles

    cert, key = pki[(kind, name)]
    return TlsFiles((ca or pki)[("ca", "")][0], cert, key)


def test_the_probe_tells_what_retrying_can_fix_from_what_it_cannot(pkis, director_port):
    from fedloom.federation.transport.handshake import diagnose

    ours, theirs = pkis
    server, port = director_port
    if server == "tls":
        good = diagnose("127.0.0.1", port, files(ours), tls_expected=True, failure="x")
        assert good.retry and "succeeds; the connection failed for another reason: x" in \
            good.message
        other_ca = diagnose("127.0.0.1", port, files(theirs), tls_expected=True)
        assert (other_ca.retry, other_ca.certain) == (False, True)
        assert "was not issued by the root CA" in other_ca.message
        refused = diagnose("127.0.0.1", port, files(theirs, ca=ours), tls_expected=True)
        assert not refused.retry and "refused this envoy's certificate" in refused.message
        plain = diagnose("127.0.0.1", port, None, tls_expected=False)
        assert not plain.retry and "requires TLS" in plain.message
    else:
        tls = diagnose("127.0.0.1", port, files(ours), tls_expected=True)
        assert (tls.retry, tls.certain) == (False, True) and "does not speak TLS" in tls.message
        plain = diagnose("127.0.0.1", port, None, tls_expected=False)
        assert plain.retry and "answers plaintext HTTP/2" in plain.message
    with unused_port() as nowhere:
        away = diagnose("127.0.0.1", nowhere, files(ours), tls_expected=True)
    assert away.retry and "connection refused" in away.message
