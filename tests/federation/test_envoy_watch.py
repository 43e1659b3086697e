"""The envoy tells a collaborator process that is slow to start (busy: its CPU time grows) from
one that hangs (stopped: it does not); it beats with unary calls for a director without the
Beat stream."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from fedloom.federation.nodes.envoy import _cpu_seconds
from fedloom.federation.transport.proto import fedloom_pb2 as pb
from tests.federation.nodes import lone_envoy


def _spin() -> None:
    while True:
        pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_busy_process_uses_cpu_and_a_stopped_one_does_not():
    process = multiprocessing.get_context("spawn").Process(target=_spin, daemon=True)
    process.start()
    try:
        first = _cpu_seconds(process)
        deadline = time.monotonic() + 30
        while _cpu_seconds(process) <= first + 0.05:  # busy: its CPU time grows
            assert time.monotonic() < deadline, "a spinning process used no CPU in 30 s"
            time.sleep(0.05)
        assert process.pid is not None
        os.kill(process.pid, signal.SIGSTOP)
        stopped = _cpu_seconds(process)
        time.sleep(0.3)  # a stopped process's CPU time must not move meanwhile
        assert _cpu_seconds(process) - stopped < 0.02
    finally:
        process.kill()
        process.join(10)
    assert _cpu_seconds(process) == -1.0  # gone
    assert _cpu_seconds(None) == -1.0


class OlderDirector:
    """A director without the Beat stream: it registers the envoy, holds its work stream open
    and counts its unary heartbeats (a thread-pool server, as directors before grpc.aio)."""

    def __init__(self) -> None:
        self.beats = threading.Semaphore(0)
        self.done = threading.Event()

    def Register(self, request, context):
        return pb.RegisterReply(session="s1", health_check_period=0.4)

    def GetWork(self, request, context):
        self.done.wait(60)
        return iter(())

    def Heartbeat(self, request, context):
        assert request.session == "s1"
        self.beats.release()
        return pb.Ack()


@pytest.mark.slow
def test_an_envoy_beats_with_unary_calls_for_a_director_without_the_beat_stream(tmp_path):
    director = OlderDirector()
    handlers = {
        "Register": grpc.unary_unary_rpc_method_handler(
            director.Register, request_deserializer=pb.RegisterRequest.FromString,
            response_serializer=pb.RegisterReply.SerializeToString),
        "GetWork": grpc.unary_stream_rpc_method_handler(
            director.GetWork, request_deserializer=pb.WorkRequest.FromString,
            response_serializer=pb.Work.SerializeToString),
        "Heartbeat": grpc.unary_unary_rpc_method_handler(
            director.Heartbeat, request_deserializer=pb.WorkRequest.FromString,
            response_serializer=pb.Ack.SerializeToString)}  # no Beat: UNIMPLEMENTED
    server = grpc.server(ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("fedloom.v1.Director", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        envoy = lone_envoy(tmp_path, "Oslo", port)
        try:
            for _ in range(3):  # beat after beat, each a call
                assert director.beats.acquire(timeout=60), "\n".join(envoy.seen)
        finally:
            director.done.set()
            envoy.stop()
    finally:
        server.stop(0)
