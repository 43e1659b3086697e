"""The pipe between a node and its experiment process: frames of every size arrive whole, and a
frame received into a memory file is handed over by its descriptor."""

from __future__ import annotations

import multiprocessing

import pytest

from fedloom.federation.transport.pipes import INLINE_BYTES, FramePipe, MemoryFrame


def _echo(connection) -> None:  # type: ignore[no-untyped-def]
    pipe = FramePipe(connection)
    while True:
        message = pipe.recv()
        if message == ("stop",):
            return
        *head, frame = message
        pipe.send((*head, bytes(frame)))


@pytest.fixture
def echo():  # type: ignore[no-untyped-def]
    parent, child = multiprocessing.get_context("spawn").Pipe()
    process = multiprocessing.get_context("spawn").Process(target=_echo, args=(child,))
    process.start()
    child.close()
    pipe = FramePipe(parent)
    yield pipe
    pipe.send(("stop",))
    process.join(timeout=30)
    assert process.exitcode == 0


@pytest.mark.parametrize("size", [0, 10, INLINE_BYTES + 1, 3 << 20])
def test_frames_and_memory_frames_arrive_whole(echo: FramePipe, size: int) -> None:
    data = bytes(i % 253 for i in range(size))
    echo.send(("plain", 1, data))
    assert echo.recv() == ("plain", 1, data)
    frame = MemoryFrame(size)
    frame.view[:] = data
    echo.send(("memory", 2, frame))
    assert echo.recv() == ("memory", 2, data)
    if size > INLINE_BYTES:
        assert frame.fd >= 0 and frame._closer.alive is False  # handed over, closed here


@pytest.mark.parametrize("size", [3, INLINE_BYTES * 2])
def test_a_frame_in_pieces_arrives_as_the_frame(echo: FramePipe, size: int) -> None:
    import numpy as np

    from fedloom.federation.transport import wire

    state = {"model": np.arange(size, dtype=np.int32), "round": 2}
    parts = wire.dumps_parts(state)
    assert len(parts) == len(wire.dumps(state))
    echo.send(("parts", parts))
    (tag, frame) = echo.recv()
    assert tag == "parts" and frame == wire.dumps(state)
    back = wire.loads(frame)
    np.testing.assert_array_equal(back["model"], state["model"])


def test_the_aggregators_task_outputs_go_in_batches_never_behind_another_message():
    from fedloom.federation.nodes.experiment_process import OutputBatchingPipe

    ours, theirs = multiprocessing.Pipe()
    pipe, other = OutputBatchingPipe(ours), FramePipe(theirs)
    pipe.OUTPUT_DELAY = 60.0  # no timer can cut the batch below, however slow this machine
    for i in range(100):  # a fan-out's tasks, recorded one after the other
        pipe.add_output(b"task %d" % i)
    pipe.send(("chains", "r2"))  # the next message: the outputs go first, in one message
    assert other.recv() == ("outputs", [b"task %d" % i for i in range(100)])
    assert other.recv() == ("chains", "r2")
    pipe.OUTPUT_DELAY = 0.01
    pipe.add_output(b"alone")  # nothing follows: it goes out by itself, soon
    assert other.poll(30)
    assert other.recv() == ("outputs", [b"alone"])
    pipe.close()
    other.close()
