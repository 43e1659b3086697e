"""An envoy's small chain outcomes on one long-lived Bulk.PushStream call: sent in order after
the session, one call each (PushSmall) against a director without the stream, and an end of
the stream under a live connection reported (it may have carried outcomes)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import grpc
import pytest

from fedloom.federation.transport import TransportError, bulk
from fedloom.federation.transport.proto import fedloom_pb2 as pb

Behaviour = Callable[[Iterator[bytes], grpc.ServicerContext], bytes]


@contextmanager
def bulk_server(push_stream: Behaviour | None) -> Iterator[grpc.Channel]:
    """A Bulk service with only PushStream (or nothing: UNIMPLEMENTED), and a channel to it."""
    handlers = {} if push_stream is None else {"PushStream": grpc.stream_unary_rpc_method_handler(
        push_stream, response_serializer=None)}
    server = grpc.server(ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(bulk.SERVICE,
                                                                          handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        server.stop(0)


def outcome(experiment: str, request: str) -> pb.Report:
    return pb.Report(session="s1", experiment=experiment, request=request,
                     outcome=pb.ChainOutcome(collaborator="Oslo", join_step="join"))


class Ends:
    """The ``on_end`` callback: the reasons it was given."""

    def __init__(self) -> None:
        self.reasons: queue.SimpleQueue[str] = queue.SimpleQueue()

    def __call__(self, why: str) -> None:
        self.reasons.put(why)


def test_outcomes_follow_the_session_on_one_call_and_closing_ends_it_quietly():
    received: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    finished = threading.Event()

    def push_stream(messages: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        context.send_initial_metadata((bulk.STREAM_OPEN,))
        for message in messages:
            received.put(message)
        finished.set()
        return pb.Ack().SerializeToString()

    ends = Ends()
    with bulk_server(push_stream) as channel:
        stream = bulk.OutcomeStream(channel, "s1", ends)
        for i in range(3):
            assert stream.send(outcome("1-x", f"r{i}"), f"state {i}".encode())
        assert pb.WorkRequest.FromString(received.get(timeout=30)).session == "s1"
        for i in range(3):
            header, state = bulk.split_small_push(received.get(timeout=30))
            head = pb.Report.FromString(header)
            assert (head.request, bytes(state), head.bulk_bytes) == \
                (f"r{i}", f"state {i}".encode(), len(f"state {i}"))
        stream.close()
        assert finished.wait(30), "closing did not end the call"
        stream._call.result(timeout=30)  # done on this side too: its callbacks have run
    assert ends.reasons.empty(), "a call we closed ourselves was reported as ended"


def test_without_the_stream_each_outcome_goes_in_a_call_of_its_own(caplog):
    ends = Ends()
    with bulk_server(None) as channel:
        stream = bulk.OutcomeStream(channel, "s1", ends)
        with caplog.at_level("INFO"):
            assert not stream.send(outcome("1-x", "r0"), b"state")
        assert not stream.send(outcome("1-x", "r1"), b"state")  # decided once
        stream.close()
    assert "UNIMPLEMENTED" in caplog.text and "one call each" in caplog.text
    assert ends.reasons.empty()


@pytest.mark.parametrize(("ending", "says"), [
    ("abort", "INVALID_ARGUMENT: no more"),
    ("return", "closed by the director"),
])
def test_a_stream_that_ends_under_a_live_connection_is_reported(ending: str, says: str):
    def push_stream(messages: Iterator[bytes], context: grpc.ServicerContext) -> Any:
        context.send_initial_metadata((bulk.STREAM_OPEN,))
        next(messages), next(messages)  # the session, one outcome
        if ending == "abort":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no more")
        return pb.Ack().SerializeToString()

    ends = Ends()
    with bulk_server(push_stream) as channel:
        stream = bulk.OutcomeStream(channel, "s1", ends)
        assert stream.send(outcome("1-x", "r0"), b"state")
        assert says in ends.reasons.get(timeout=30)
        with pytest.raises(TransportError, match="outcome stream ended"):
            stream.send(outcome("1-x", "r1"), b"state")
        stream.close()
