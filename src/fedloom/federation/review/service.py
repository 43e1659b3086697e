"""The node's local review service: ``fx director review`` and ``fx envoy review`` talk to the
running node over a Unix socket in a private (0700) folder, whose address the node writes to
``review.address`` in its work folder. Only the node's own user on its own machine can use it.

The folder is ``review-socket`` inside the work folder when the socket's path fits a Unix
socket address (about 100 bytes); else a temporary folder, which the next start of the same
node removes if this one could not (it was killed). Leftovers are cleared only by a node that
holds its work folder's lock (see :mod:`fedloom.federation.nodes.nodelock`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from concurrent import futures
from pathlib import Path

import grpc

from fedloom.errors import FedloomError
from fedloom.federation.nodes import nodelock
from fedloom.federation.review.desk import ReviewDesk, ReviewError
from fedloom.federation.transport.proto import fedloom_pb2 as pb
from fedloom.federation.transport.proto import fedloom_pb2_grpc as rpc

ADDRESS_FILE = "review.address"
SOCKET_FOLDER = "review-socket"
SOCKET_NAME = "review.sock"
TEMP_PREFIX = "fedloom-review-"
BY_COMMAND = "fx review"


class ReviewServicer(rpc.ReviewServicer):
    def __init__(self, desk: ReviewDesk) -> None:
        self._desk = desk

    def Pending(self, request: pb.PendingRequest,
                context: grpc.ServicerContext) -> pb.PendingReply:
        return pb.PendingReply(pending=[
            pb.PendingReview(experiment=p.plan.experiment, submitter=p.plan.submitter,
                             digest=p.plan.digest, flow_class=p.plan.flow_class, since=p.since)
            for p in self._desk.pending()])

    def Show(self, request: pb.ShowRequest, context: grpc.ServicerContext) -> pb.ShowReply:
        try:
            return pb.ShowReply(text=self._desk.get(request.experiment).plan.text())
        except ReviewError as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            raise

    def Decide(self, request: pb.DecideRequest, context: grpc.ServicerContext) -> pb.Decision:
        try:
            return self._desk.decide(request.experiment, request.approve, request.reason,
                                     BY_COMMAND, request.digest)
        except ReviewError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            raise

    def History(self, request: pb.HistoryRequest,
                context: grpc.ServicerContext) -> pb.HistoryReply:
        return pb.HistoryReply(decisions=self._desk.log.decisions())


class LocalReviewServer:
    """Serves a desk on a private Unix socket while the node runs."""

    def __init__(self, desk: ReviewDesk, workdir: Path,
                 node: rpc.NodeServicer | None = None) -> None:
        """``node``: the node's status (fx director status, fx envoy status), on the same
        socket."""
        self._address_file = workdir / ADDRESS_FILE
        self._folder = _socket_folder(workdir)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4,
                                                              thread_name_prefix="fedloom-review"))
        rpc.add_ReviewServicer_to_server(ReviewServicer(desk), self._server)
        if node is not None:
            rpc.add_NodeServicer_to_server(node, self._server)
        self.address = f"unix:{self._folder / SOCKET_NAME}"
        if not self._server.add_insecure_port(self.address):
            raise FedloomError(f"cannot open the review socket {self.address}")

    def start(self) -> None:
        self._server.start()
        self._address_file.parent.mkdir(parents=True, exist_ok=True)
        self._address_file.write_text(self.address + "\n")

    def stop(self) -> None:
        self._server.stop(1)
        with contextlib.suppress(OSError):
            self._address_file.unlink()
        shutil.rmtree(self._folder, ignore_errors=True)


def _socket_folder(workdir: Path) -> Path:
    """A new private folder for the socket; a node that holds its work folder clears what an
    earlier run of it left (it was killed), and keeps its socket in the work folder."""
    if nodelock.held(workdir):
        _clear_leftovers(workdir)
    inside = nodelock.socket_folder(workdir, SOCKET_FOLDER, SOCKET_NAME)
    return inside or Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))  # mode 0700


def _clear_leftovers(workdir: Path) -> None:
    """The socket and address of a run of this node that did not stop cleanly and kept its
    socket in the system's temporary folder (one in the work folder goes with
    :func:`nodelock.socket_folder`)."""
    address_file = workdir / ADDRESS_FILE
    with contextlib.suppress(OSError, ValueError):
        address = address_file.read_text().strip()
        old = Path(address.removeprefix("unix:")).parent
        if old.name.startswith(TEMP_PREFIX) and old.stat().st_uid == os.getuid():
            shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(OSError):
        address_file.unlink()


def review_stub(workdir: Path) -> tuple[grpc.Channel, rpc.ReviewStub]:
    """A client of the running node whose work folder is ``workdir``."""
    channel = local_channel(workdir)
    return channel, rpc.ReviewStub(channel)


def local_channel(workdir: Path) -> grpc.Channel:
    """A channel to the local socket of the running node whose work folder is ``workdir``
    (its Review and Node services)."""
    address_file = workdir / ADDRESS_FILE
    if not address_file.is_file():
        raise FedloomError(f"no running node has its work folder at {workdir} (no "
                           f"{ADDRESS_FILE}); run this on the node's machine, from the folder "
                           "it was started in, or pass --workdir")
    channel = grpc.insecure_channel(address_file.read_text().strip())
    try:
        grpc.channel_ready_future(channel).result(timeout=5)
    except grpc.FutureTimeoutError:
        channel.close()
        raise FedloomError(f"the node with work folder {workdir} does not answer; is it "
                           "still running?") from None
    return channel
