"""Why a connection to the director failed, and whether trying again can help.

gRPC's connectivity API says only that a channel failed. When it does, :func:`diagnose` probes
the director's port itself: a plain TCP connection first (refused, unreachable or silent: the
director is away, try again later); then, with TLS, a TLS handshake with the node's own root
CA, certificate and key (the director's certificate not trusted, ours refused, or no TLS at
the other end: retrying cannot fix that); without TLS, an HTTP/2 preface, which a plaintext
gRPC server answers with its settings and a TLS server with an alert or by hanging up.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

from fedloom.federation.pki import TlsFiles

PROBE_TIMEOUT = 5.0
# The HTTP/2 client connection preface and an empty SETTINGS frame.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
TLS_ALERT = 0x15  # the content type of a TLS alert record
H2_SETTINGS = 0x04  # the frame type a gRPC server's first frame has


@dataclass(frozen=True)
class Diagnosis:
    """``retry``: the director may be reachable later (down, restarting, unreachable, or no
    reason found). ``certain``: the evidence is unambiguous (a certificate rejected, bytes that
    are not TLS); a verdict that is not certain (the other end just hung up) counts only when
    it repeats."""

    retry: bool
    message: str
    certain: bool = True


def diagnose(host: str, port: int, tls: TlsFiles | None, *, tls_expected: bool,
             failure: str = "", timeout: float = PROBE_TIMEOUT) -> Diagnosis:
    """Probe ``host:port`` as a node configured with ``tls`` (None: plaintext) would connect.
    ``tls_expected`` says the node uses TLS even when its files are unknown here (then only the
    TCP connection is probed); ``failure`` is what gRPC said, for when the probe finds nothing
    wrong."""
    where = f"{host}:{port}"
    other = f"; the connection failed for another reason{f': {failure}' if failure else ''}"
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as exc:
        return Diagnosis(True, f"cannot resolve the director's host name {host!r} ({exc}); "
                               "check -dh")
    except ConnectionRefusedError:
        return Diagnosis(True, f"the director at {where} is not running (connection refused)")
    except TimeoutError:
        return Diagnosis(True, f"no answer from {where} within {timeout:g} s (a firewall, or "
                               "the host is down)")
    except OSError as exc:
        return Diagnosis(True, f"cannot reach {where}: {exc.strerror or exc}")
    with raw:
        raw.settimeout(timeout)
        if tls is not None:
            return _probe_tls(raw, host, where, tls, other)
        if not tls_expected:
            return _probe_plaintext(raw, where, other)
    return Diagnosis(True, f"the director at {where} accepts connections{other}")


def _probe_tls(raw: socket.socket, host: str, where: str, files: TlsFiles,
               other: str) -> Diagnosis:
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.root_ca))
        context.load_cert_chain(str(files.cert), str(files.key))
        context.set_alpn_protocols(["h2"])
    except (OSError, ssl.SSLError) as exc:  # the files were checked at start: unexpected
        return Diagnosis(True, f"could not probe the TLS handshake with {where}: {exc}")
    try:
        with context.wrap_socket(raw, server_hostname=host, do_handshake_on_connect=False) as tls:
            try:
                tls.do_handshake()
            except ssl.SSLCertVerificationError as exc:
                return _untrusted_director(where, files, exc)
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError) as exc:
                return Diagnosis(False, _not_tls(where, f"it hung up during the TLS handshake: "
                                                        f"{exc}"), certain=False)
            except ssl.SSLError as exc:
                return _handshake_failed(where, files, exc)
            # With TLS 1.3 the director checks our certificate after the handshake completed
            # on our side: it answers with its HTTP/2 settings, or refuses and hangs up.
            try:
                tls.sendall(H2_PREFACE)
                answer = tls.recv(16)
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
                return _refused_us(where, files, str(exc), certain=False)
            except ssl.SSLError as exc:
                return _handshake_failed(where, files, exc)
            except TimeoutError:
                return Diagnosis(True, f"the director at {where} did not answer after the TLS "
                                       "handshake")
            except (ConnectionError, OSError) as exc:
                return _refused_us(where, files, str(exc), certain=False)
            if not answer:
                return _refused_us(where, files, "it hung up", certain=False)
            return Diagnosis(True, f"the TLS handshake with {where} succeeds{other}")
    except TimeoutError:
        return Diagnosis(True, f"the TLS handshake with {where} took longer than "
                               f"{raw.gettimeout()} s")
    except OSError as exc:
        return Diagnosis(True, f"the TLS handshake with {where} failed: {exc}")


def _untrusted_director(where: str, files: TlsFiles,
                        exc: ssl.SSLCertVerificationError) -> Diagnosis:
    why = exc.verify_message or str(exc)
    if "hostname" in why.lower() or "ip address mismatch" in why.lower():
        return Diagnosis(False, f"the director's certificate is not valid for the address "
                                f"{where} ({why}): connect with a host name on its "
                                "certificate (fx pki show), or issue the director a "
                                "certificate with --host for it")
    return Diagnosis(False, f"the director's certificate at {where} was not issued by the root "
                            f"CA {files.root_ca} ({why}): the director belongs to another "
                            "federation, or -rc is not this federation's ca.crt")


NOT_TLS_REASONS = ("WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE",
                   "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "RECORD_TOO_LARGE")
OUR_CERTIFICATE_ALERTS = ("CERTIFICATE", "UNKNOWN_CA", "BAD_CERT", "DECRYPT_ERROR",
                          "ACCESS_DENIED")


def _handshake_failed(where: str, files: TlsFiles, exc: ssl.SSLError) -> Diagnosis:
    reason = exc.reason or ""
    if "ALERT" in reason and any(word in reason for word in OUR_CERTIFICATE_ALERTS):
        return _refused_us(where, files, reason)
    if reason in NOT_TLS_REASONS:
        return Diagnosis(False, _not_tls(where, reason))
    return Diagnosis(False, f"the TLS handshake with the director at {where} failed "
                            f"({reason or exc}); check that it runs this federation's fedloom "
                            "with TLS", certain=False)


def _refused_us(where: str, files: TlsFiles, why: str, certain: bool = True) -> Diagnosis:
    return Diagnosis(False, f"the director at {where} refused this envoy's certificate "
                            f"{files.cert} ({why}): it was not issued by a CA the director "
                            "trusts; use a certificate from the director's federation CA "
                            "(fx pki issue --kind envoy)", certain)


def _not_tls(where: str, why: str) -> str:
    return (f"the director at {where} does not speak TLS ({why}): it was probably started with "
            "--disable-tls; start this envoy with --disable-tls too, or the director with TLS")


def _probe_plaintext(raw: socket.socket, where: str, other: str) -> Diagnosis:
    def requires_tls(evidence: str) -> str:
        return (f"the director at {where} requires TLS ({evidence}), and this envoy was started "
                "with --disable-tls: start it with -rc/-pk/-oc and certificates from the "
                "federation's CA (fx pki)")

    try:
        raw.sendall(H2_PREFACE)
        answer = raw.recv(16)
    except TimeoutError:
        return Diagnosis(True, f"the director at {where} did not answer")
    except OSError as exc:
        return Diagnosis(False, requires_tls(f"it hung up on plaintext: {exc}"), certain=False)
    if not answer:
        return Diagnosis(False, requires_tls("it hung up on a plaintext HTTP/2 preface"),
                         certain=False)
    if answer[0] == TLS_ALERT:
        return Diagnosis(False, requires_tls("it answered plaintext with a TLS alert"))
    if len(answer) >= 4 and answer[3] == H2_SETTINGS:
        return Diagnosis(True, f"the director at {where} answers plaintext HTTP/2{other}")
    return Diagnosis(False, f"what listens at {where} is not a fedloom director (it answered "
                            f"{answer[:8]!r}); check -dh and -dp", certain=False)
