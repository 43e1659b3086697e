"""Large states on fedloom.v1.Bulk: raw pieces put in place, only for the envoy they were sent
to, and a director that refuses what does not fit."""

from __future__ import annotations

import grpc
import pytest

from fedloom.federation import transport
from fedloom.federation.transport import TransportError, bulk
from fedloom.federation.transport.proto import fedloom_pb2 as pb


@pytest.mark.parametrize("size", [0, 1, bulk.PIECE_BYTES - 1, bulk.PIECE_BYTES,
                                  2 * bulk.PIECE_BYTES + 7])
def test_pieces_are_put_back_in_place(size: int) -> None:
    frame = bytes(i % 251 for i in range(size))
    receiver = bulk.Receiver(size, "state")
    parts = list(bulk.pieces(memoryview(frame)))
    assert all(len(p) <= bulk.PIECE_BYTES for p in parts)
    for part in parts:
        receiver.add(part)
    assert receiver.finish().view == frame


def test_a_receiver_refuses_too_much_too_little_and_an_absurd_size() -> None:
    with pytest.raises(TransportError, match="more than the 100 allowed"):
        bulk.Receiver(101, "state", max_bytes=100)
    receiver = bulk.Receiver(4, "result of 'site'")
    receiver.add(b"abc")
    with pytest.raises(TransportError, match="ended after 3 of 4 bytes"):
        receiver.finish()
    with pytest.raises(TransportError, match="more bytes than the 4 announced"):
        receiver.add(b"de")


def test_the_outbox_gives_a_state_once_and_only_to_its_envoys() -> None:
    outbox = bulk.Outbox()
    outbox.offer("e1", "r1", b"state", {"a", "b"})
    assert outbox.take("e1", "r1", "mallory") is None
    assert outbox.take("e1", "r1", "a") == b"state"
    assert outbox.take("e1", "r1", "a") is None  # once
    outbox.offer("e1", "r2", b"next round", {"a", "b"})  # b never pulled r1: replaced
    assert outbox.take("e1", "r1", "b") is None
    outbox.offer("e2", "r1", b"other", {"b"})
    outbox.drop("e1")
    assert outbox.take("e1", "r2", "a") is None
    assert outbox.take("e2", "r1", "b") == b"other"


@pytest.mark.slow
def test_the_director_refuses_bulk_calls_that_are_not_in_order(tmp_path) -> None:
    from tests.federation.nodes import federation

    with federation(tmp_path, {}, tls=False) as fed:
        channel = transport.open_channel(transport.Endpoint("127.0.0.1", fed.public_port), None)
        from fedloom.federation.transport.proto import fedloom_pb2_grpc as rpc

        session = rpc.DirectorStub(channel).Register(pb.RegisterRequest(name="ghost"),
                                                     timeout=30).session

        def pull(session_id: str) -> grpc.RpcError:
            with pytest.raises(grpc.RpcError) as caught:
                bulk.pull(channel, pb.PullRequest(session=session_id, experiment="e9",
                                                  request="r1"), 10, "state")
            return caught.value

        denied = pull(session)
        assert denied.code() == grpc.StatusCode.NOT_FOUND
        assert "no state waits for envoy 'ghost'" in denied.details()
        assert pull("forged").code() == grpc.StatusCode.UNAUTHENTICATED

        push = channel.stream_unary(bulk.PUSH, request_serializer=None,
                                    response_deserializer=pb.Ack.FromString)
        with pytest.raises(grpc.RpcError) as corrupt:
            push(iter([b"\xff\xff not a header", b"data"]), timeout=30)
        assert corrupt.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        head = pb.Report(session=session, experiment="e9", request="r1",
                         outcome=pb.ChainOutcome(collaborator="ghost"))
        with pytest.raises(grpc.RpcError) as stranger:
            bulk.push(channel, head, b"state")
        assert stranger.value.code() == grpc.StatusCode.PERMISSION_DENIED
        channel.close()


def test_a_package_waits_for_every_reviewer_and_outlives_the_fan_outs() -> None:
    outbox = bulk.Outbox()
    outbox.offer("e1", bulk.PACKAGE, b"package", {"a", "b"})
    assert outbox.take("e1", bulk.PACKAGE, "a") == b"package"
    outbox.offer("e1", "r1", b"state", {"a", "b"})  # a fan-out: the package stays for b
    assert outbox.take("e1", bulk.PACKAGE, "b") == b"package"
    outbox.offer("e1", bulk.PACKAGE, b"package", {"a"})  # a rejoins: it reviews again
    assert outbox.take("e1", "r1", "a") == b"state"
    assert outbox.take("e1", bulk.PACKAGE, "a") == b"package"
    assert outbox.take("e1", bulk.PACKAGE, "a") is None


@pytest.mark.slow
def test_a_large_final_state_goes_to_its_submitter_once_and_to_nobody_else(fed) -> None:
    import numpy as np

    from fedloom.runtime.federated import FederatedRuntime
    from tests.conftest import SHARED_ENVOYS as envoys
    from tests.federation.flows import FedAvgFlow

    model = np.zeros((70_000, 3))  # 1.7 MB: the package, states and result all move on Bulk
    flow = FedAvgFlow(model=model, rounds=1)
    flow.runtime = runtime = FederatedRuntime(collaborators=list(envoys),
                                              director=fed.director_info())
    flow.run()
    np.testing.assert_allclose(flow.model, model + 2.0)
    experiment = runtime.last_experiment
    for user, code in (("mallory", grpc.StatusCode.PERMISSION_DENIED),
                       ("alice", grpc.StatusCode.NOT_FOUND)):  # taken already
        other = FederatedRuntime(collaborators=list(envoys), director=fed.director_info(user))
        with other._channel() as channel, pytest.raises(grpc.RpcError) as caught:
            bulk.result(channel, experiment, model.nbytes)
        assert caught.value.code() == code, caught.value.details()
