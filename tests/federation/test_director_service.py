"""The director as a long-lived service, with real processes and certificates: one director per
port, one live envoy per name, state that survives a restart, waits that say what they wait for
and end, output of any size, and limits that keep one peer from stalling the others."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedloom import FedloomError
from fedloom.federation.localhost import LocalFederation, local_federation
from fedloom.runtime.federated import FederatedRuntime
from tests.conftest import SHARED_ENVOYS
from tests.federation.flows import FedAvgFlow
from tests.federation.nodes import (
    FX,
    PRIVATE_ATTRIBUTES,
    ROOT,
    Node,
    director_config,
    envoy_config,
    experiment_processes,
)

pytestmark = pytest.mark.slow

ENVOYS = SHARED_ENVOYS  # the shared federation's, ``fed`` (tests/conftest.py)


@contextmanager
def federation(folder: Path, envoys: dict[str, float] = ENVOYS,
               **settings: object) -> Iterator[LocalFederation]:
    """Like tests.federation.nodes.federation, with extra director ``settings``."""
    extra = "".join(f"  {key}: {value}\n" for key, value in settings.items())
    config = director_config().replace("aggregator:", f"{extra}aggregator:")
    pythonpath = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    with local_federation(folder, {name: envoy_config(name, value)
                                   for name, value in envoys.items()}, config,
                          files={"private_attributes.py": PRIVATE_ATTRIBUTES},
                          users=("alice", "mallory"), env={"PYTHONPATH": pythonpath}) as fed:
        yield fed


def runtime(fed: LocalFederation, collaborators: list[str] | None = None,
            user: str = "alice", **options: object) -> FederatedRuntime:
    return FederatedRuntime(collaborators=collaborators or list(ENVOYS),
                            director=fed.director_info(user), **options)  # type: ignore[arg-type]


def run(fed: LocalFederation, collaborators: list[str] | None = None,
        **flow_args: object) -> FedAvgFlow:
    flow = FedAvgFlow(**flow_args)
    flow.runtime = runtime(fed, collaborators)
    flow.run()
    return flow


def restart_director(fed: LocalFederation, folder: Path) -> None:
    """Kill the director (no goodbye) and start it again in its folder, on its port."""
    fed.director.process.kill()
    fed.director.process.wait(timeout=30)
    config = folder / "director.yaml"
    config.write_text(config.read_text().replace("listen_port: 0", f"listen_port: {fed.port}"))
    fed.director = Node([*FX, "director", "start", "-c", str(config),
                         *fed.tls_args("director", "director")], folder, fed.env)
    fed.director.wait_for(rf"director listening on [^:]+:{fed.port}")


def test_a_second_director_on_a_port_in_use_is_refused_and_the_first_keeps_serving(tmp_path,
                                                                                   fed):
    other = tmp_path / "other"
    other.mkdir()
    (other / "private_attributes.py").write_text(PRIVATE_ATTRIBUTES)
    config = other / "director.yaml"
    config.write_text(director_config().replace("listen_port: 0",
                                                f"listen_port: {fed.port}"))
    second = Node([*FX, "director", "start", "-c", str(config),
                   *fed.tls_args("director", "director")], other, fed.env)
    second.wait_for(rf"cannot listen on 127.0.0.1:{fed.port}: the port is in use")
    assert second.process.wait(timeout=30) == 1
    flow = run(fed, ["envoy_one"], rounds=1)
    np.testing.assert_allclose(flow.model, [1.0, 1.0, 1.0])


def test_a_second_process_under_a_live_envoys_name_is_refused_until_the_first_is_gone(
        tmp_path, fed):
    twin_folder = tmp_path / "twin"
    twin_folder.mkdir()
    twin = Node([*FX, "envoy", "start", "-n", "envoy_one", "-ec",
                 str(fed.folder / "envoy_envoy_one.yaml"), "-dh", "127.0.0.1", "-dp",
                 str(fed.port), *fed.tls_args("envoy", "envoy_one")], twin_folder, fed.env)
    try:
        twin.wait_for(r"did not register it: envoy 'envoy_one' is already connected from "
                      r"ipv4:127\.0\.0\.1:\d+")
        fed.director.wait_for(r"envoy 'envoy_one': another process from "
                              r"ipv4:127\.0\.0\.1:\d+ tried to register")
        fed.envoys["envoy_one"].wait_for(r"another process from ipv4:127\.0\.0\.1:\d+ tried "
                                         r"to register as envoy 'envoy_one'")
        flow = run(fed, rounds=1)  # the first one still serves, undisturbed
        np.testing.assert_allclose(flow.model, [2.0, 2.0, 2.0])
        fed.envoys["envoy_one"].process.kill()
        twin.wait_for(r"registered with the director")  # the twin takes over
        flow = run(fed, rounds=1)
        np.testing.assert_allclose(flow.model, [2.0, 2.0, 2.0])
    finally:
        twin.stop()


def test_after_a_restart_ids_go_on_and_a_finished_run_can_still_be_fetched(
        tmp_path, metaflow_client, fed):
    first = runtime(fed)
    flow = FedAvgFlow(rounds=1, checkpoint=True)
    flow.runtime = first
    flow.run()
    restart_director(fed, fed.folder)
    for name in ENVOYS:
        fed.director.wait_for(rf"envoy '{name}' registered")
    reconnected = {name: len(node.seen) for name, node in fed.envoys.items()}
    later = runtime(fed)
    again = FedAvgFlow(rounds=1)
    again.runtime = later
    again.run()
    for name, node in fed.envoys.items():  # on each new connection, from its first outcome
        node.wait_for("chain outcomes go on one stream to the director", timeout=30,
                      since=reconnected[name])
    assert int(later.last_experiment.split("-")[0]) > \
        int(first.last_experiment.split("-")[0])
    fetched = later.fetch_run(first.last_experiment, datastore_root=tmp_path / "fetched")
    assert fetched.is_dir() and fetched.name == flow._run_id


def test_an_experiment_naming_an_offline_envoy_says_so_and_fails_after_its_deadline(
        tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fedloom.runtime.federated")
    with federation(tmp_path, {"envoy_one": 1.0}, wait_for_envoys=2) as fed:
        with pytest.raises(FedloomError, match=r"envoys ghost did not come online within 2 s "
                                               r"\(wait_for_envoys\); never registered: ghost"):
            run(fed, ["envoy_one", "ghost"], rounds=1)
        fed.director.wait_for(r"waiting for envoys ghost \(offline\) since")
        assert "waiting for envoys ghost (offline) since" in caplog.text
        flow = run(fed, ["envoy_one"], rounds=1)  # nothing was held meanwhile
        np.testing.assert_allclose(flow.model, [1.0, 1.0, 1.0])


def test_a_step_that_prints_100_mb_reaches_the_user_cut_and_the_run_completes(fed, capsys):
    flow = run(fed, rounds=1, shout=100_000_000)
    np.testing.assert_allclose(flow.model, [2.0, 2.0, 2.0])
    out = capsys.readouterr().out
    assert out.count("characters of output cut here") == 2  # one per collaborator
    assert "[train @ New York] xxxx" in out


class IdleUploads:
    """``count`` Submit calls from one certificate that never send anything, on a loop of
    their own; counts the ones the director refuses."""

    def __init__(self, fed: LocalFederation, user: str, count: int) -> None:
        self._fed, self._user, self._count = fed, user, count
        self.refusals: list[str] = []
        self.refused_enough = threading.Event()
        self.ended: list[tuple[grpc.StatusCode, str]] = []  # every call that ended, and how
        self.all_ended = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete,
                                        args=(self._main(),), daemon=True)

    def __enter__(self) -> IdleUploads:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)
        self._loop.close()

    async def _main(self) -> None:
        from fedloom.federation.pki import TlsFiles, channel_credentials
        from fedloom.federation.transport.proto import fedloom_pb2_grpc as rpc

        self._stop = asyncio.Event()
        info = self._fed.director_info(self._user)
        files = TlsFiles(*(Path(str(info[k])) for k in ("cert_chain", "api_cert",
                                                         "api_private_key")))
        address = f"127.0.0.1:{self._fed.port}"
        async with grpc.aio.secure_channel(address, channel_credentials(files)) as channel:
            stub = rpc.DirectorStub(channel)
            calls = [stub.Submit(self._nothing()) for _ in range(self._count)]
            tasks = [asyncio.ensure_future(self._outcome(call)) for call in calls]
            await self._stop.wait()
            for call in calls:
                call.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _nothing(self):  # type: ignore[no-untyped-def]
        assert self._stop is not None
        await self._stop.wait()
        return
        yield

    async def _outcome(self, call: grpc.aio.StreamUnaryCall) -> None:
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            self.ended.append((exc.code(), exc.details() or ""))
            if len(self.ended) == self._count:
                self.all_ended.set()
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                self.refusals.append(exc.details() or "")
                if len(self.refusals) >= self._count - 8:
                    self.refused_enough.set()


def test_hundreds_of_idle_streams_from_one_certificate_do_not_stall_another_users_flow(
        tmp_path):
    with federation(tmp_path, first_message_timeout=120) as fed, \
            IdleUploads(fed, "mallory", 300) as idle:
        assert idle.refused_enough.wait(60), f"only {len(idle.refusals)} refused"
        assert all("settings.max_uploads_per_peer: 8" in r for r in idle.refusals)
        flow = run(fed, rounds=2)  # alice, meanwhile
        np.testing.assert_allclose(flow.model, [4.0, 4.0, 4.0])
        assert len(idle.refusals) == 300 - 8
    assert "missed its health checks" not in "\n".join(fed.director.seen)


def test_malformed_messages_are_refused_as_invalid_argument_naming_what(fed):
    from fedloom.federation.pki import TlsFiles, channel_credentials

    info = fed.director_info("alice")
    files = TlsFiles(*(Path(str(info[k])) for k in ("cert_chain", "api_cert",
                                                     "api_private_key")))
    with grpc.secure_channel(f"127.0.0.1:{fed.port}", channel_credentials(files)) as channel:
        submit = channel.stream_unary("/fedloom.v1.Director/Submit",
                                      request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info_submit:
            submit(iter([b"\xff\xff\xff not protobuf"]), timeout=30)
        events = channel.unary_stream("/fedloom.v1.Director/Events",
                                      request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info_events:
            list(events(b"\x0a\xff", timeout=30))
        push = channel.stream_unary("/fedloom.v1.Bulk/Submit", request_serializer=None,
                                    response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info_bulk:
            push(iter([b"\xff\xff"]), timeout=30)
        outcomes = channel.stream_unary("/fedloom.v1.Bulk/PushStream", request_serializer=None,
                                        response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info_outcomes:
            outcomes(iter([b"\xff\xff"]), timeout=30)
        with pytest.raises(grpc.RpcError) as info_session:
            outcomes(iter([b"\x0a\x02s1"]), timeout=30)  # a WorkRequest, an unknown session
    assert info_session.value.code() == grpc.StatusCode.UNAUTHENTICATED, info_session.value
    for caught, what in ((info_submit, "Submission"), (info_events, "EventsRequest"),
                         (info_bulk, "SubmissionHeader"), (info_outcomes, "WorkRequest")):
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
        assert what in caught.value.details()


def test_a_user_over_the_queue_limit_is_refused_and_a_director_gone_for_good_is_said(
        tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    import fedloom.runtime.federated as federated

    monkeypatch.setattr(federated, "RECONNECT_SECONDS", 2.0)
    with federation(tmp_path, {"envoy_one": 1.0}, max_queued_per_user=1,
                    wait_for_envoys=60) as fed, ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(run, fed, ["envoy_one", "ghost"], rounds=1)
        fed.director.wait_for(r"waiting for envoys ghost")
        with pytest.raises(FedloomError, match=r"settings\.max_queued_per_user: 1"):
            run(fed, ["envoy_one"], rounds=1)
        fed.director.process.kill()
        with pytest.raises(FedloomError, match=r"the director at 127\.0\.0\.1:\d+ went away "
                                               r"while experiment \S+ ran .* did not come back "
                                               r"within 2 s"):
            waiting.result(timeout=60)


def held_run(fed: LocalFederation, server: socket.socket) -> Future[FedAvgFlow]:
    """A run whose New York collaborator stays in its step until ``server`` lets it go."""
    pool = ThreadPoolExecutor(1)
    future = pool.submit(run, fed, hold_on="New York", hold_port=server.getsockname()[1])
    pool.shutdown(wait=False)
    return future


def test_a_run_cut_by_a_director_restart_fails_with_that_reason(fed):
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(60)
        result = held_run(fed, server)
        held, _ = server.accept()  # New York's collaborator is inside its step
        with held:
            restart_director(fed, fed.folder)
            with pytest.raises(FedloomError, match=r"experiment \S+ failed: the director "
                                                   r"restarted"):
                result.result(timeout=120)


def test_a_killed_aggregator_is_reported_with_its_exit_code(fed):
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(60)
        result = held_run(fed, server)
        held, _ = server.accept()
        with held:
            [aggregator] = experiment_processes(fed.director.process.pid)
            os.kill(aggregator, signal.SIGKILL)
            with pytest.raises(FedloomError, match=r"the aggregator process of experiment \S+ "
                                                   r"died \(exit code -9\)"):
                result.result(timeout=60)


def test_an_upload_that_never_sends_its_first_message_is_ended_at_the_deadline(tmp_path):
    with federation(tmp_path, {"envoy_one": 1.0}, first_message_timeout=1) as fed, \
            IdleUploads(fed, "mallory", 3) as idle:
        assert idle.all_ended.wait(60)
    assert [code for code, _ in idle.ended] == [grpc.StatusCode.DEADLINE_EXCEEDED] * 3
    assert all("(settings.first_message_timeout)" in details for _, details in idle.ended)
