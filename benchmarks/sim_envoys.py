"""Light simulated envoys: many envoys in one process, on the real protocol and TLS.

Each simulated envoy has its own certificate and its own grpc.aio channel (the director binds a
session to the name on the certificate), all on one asyncio loop. Like ``fx envoy`` it
registers, opens its work stream, sends a heartbeat every health-check period on one Beat
stream (and, as the real envoy does, stops when that stream fails: the work stream notices the
loss), and reconnects with the envoy's back-off when its stream ends (``--keep-beating``: a
probe that makes each heartbeat a unary call and times its answer, and goes on after a
failure, to watch the director while it is slow). It answers work without running any code:

- ``review``: the package (inline chunks, or pulled on Bulk when announced with bulk_bytes) is
  approved at once (``decided_by="sim"``);
- ``offer``: ``ready`` at once;
- ``chain``: the state it was sent goes back unchanged, as from a collaborator that changed
  nothing (``input`` set to its name, as every collaborator's chain does), with one TaskInfo
  for the step, on one Bulk.PushStream call per connection as fx envoy (Bulk.Push when large);
- ``end``, ``ping``, ``notice``: nothing.

The state is decoded with no package module allowed: the flow's public state must be builtins
and numpy (the benchmark's flow is).

Started by ``benchmarks/federation_scale.py``; it talks to its parent by lines on stdout:
``ready N`` once its certificates are loaded, then (after the ``--go`` file appears)
``stats {json}`` every ``--report-every`` seconds. SIGTERM (or its parent dying) ends it.

    python benchmarks/sim_envoys.py --address 127.0.0.1:PORT --pki DIR --names FILE \\
        --go FILE --join-step join
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from fedloom import __version__
from fedloom.federation import transport
from fedloom.federation.pki import TlsFiles, channel_credentials, safe_filename
from fedloom.federation.transport import bulk, wire
from fedloom.federation.transport.proto import fedloom_pb2 as pb
from fedloom.federation.transport.proto import fedloom_pb2_grpc as rpc

RECONNECT_SECONDS = (0.5, 1, 2, 5, 10)  # as fx envoy
OPTIONS = [*transport.KEEPALIVE_OPTIONS, ("grpc.max_receive_message_length", 16 << 20),
           ("grpc.use_local_subchannel_pool", 1)]  # one connection per simulated envoy


class Stats:
    """What the process reports: cumulative counts, and per interval the heartbeat latencies."""

    def __init__(self) -> None:
        self.online = 0  # work streams open now
        self.ever = 0  # envoys registered at least once
        self.last_first = 0.0  # time.time() of the latest first registration
        self.registrations = 0
        self.stream_ends = 0  # work streams that ended (the director dropped the envoy)
        self.hb_ok = 0
        self.hb_fail = 0
        self.latencies: list[float] = []  # ms, this interval
        self.work: collections.Counter[str] = collections.Counter()
        self.answered: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()  # this interval

    def error(self, what: str, exc: BaseException) -> None:
        if isinstance(exc, grpc.aio.AioRpcError):
            text = f"{what}: {exc.code().name}: {exc.details()}"
        else:
            text = f"{what}: {type(exc).__name__}: {exc}"
        self.errors[text[:300]] += 1

    def line(self) -> str:
        report = {"t": time.time(), "online": self.online, "ever": self.ever,
                  "last_first": self.last_first, "registrations": self.registrations,
                  "stream_ends": self.stream_ends, "hb_ok": self.hb_ok, "hb_fail": self.hb_fail,
                  "lat": [round(x, 2) for x in self.latencies], "work": dict(self.work),
                  "answered": dict(self.answered),
                  "errors": dict(self.errors.most_common(5))}
        self.latencies = []
        self.errors = collections.Counter()
        return "stats " + json.dumps(report)


class SimEnvoy:
    def __init__(self, name: str, address: str, credentials: grpc.ChannelCredentials,
                 join_step: str, stats: Stats, keep_beating: bool = False) -> None:
        self.name = name
        self.keep_beating = keep_beating  # a probe: go on after a failed heartbeat
        self.address = address
        self.credentials = credentials
        self.join_step = join_step
        self.stats = stats
        self.instance = uuid.uuid4().hex
        self.session = ""
        self.registered_once = False
        self.packages: dict[str, transport.Assembler] = {}
        self.chains: dict[tuple[str, str], transport.Assembler] = {}
        self.channel: grpc.aio.Channel | None = None
        self.stub: rpc.DirectorStub | None = None
        self.outcomes: asyncio.Queue[bytes | None] | None = None  # this connection's stream
        self.outcome_call: Any = None

    async def run(self) -> None:
        self.channel = grpc.aio.secure_channel(self.address, self.credentials, options=OPTIONS)
        self.stub = rpc.DirectorStub(self.channel)
        attempt = 0
        try:
            while True:
                registered = await self._serve_once()
                attempt = 0 if registered else attempt + 1
                await asyncio.sleep(RECONNECT_SECONDS[min(attempt, len(RECONNECT_SECONDS) - 1)])
        finally:
            await self.channel.close(grace=None)

    async def _serve_once(self) -> bool:
        assert self.stub is not None
        try:
            reply = await self.stub.Register(pb.RegisterRequest(
                name=self.name, fedloom_version=__version__, instance=self.instance), timeout=60)
        except grpc.aio.AioRpcError as exc:
            self.stats.error("Register", exc)
            return False
        self.session = reply.session
        self.stats.registrations += 1
        if not self.registered_once:
            self.registered_once = True
            self.stats.ever += 1
            self.stats.last_first = time.time()
        period = max(reply.health_check_period, 0.2)
        work = self.stub.GetWork(pb.WorkRequest(session=reply.session))
        self.stats.online += 1
        beat = asyncio.ensure_future(self._beat(period))
        try:
            async for item in work:
                await self._handle(item)
        except grpc.aio.AioRpcError as exc:
            self.stats.error("GetWork", exc)
        finally:
            self.stats.online -= 1
            self.stats.stream_ends += 1
            beat.cancel()
            if self.outcomes is not None:  # the next connection opens its own
                self.outcomes.put_nowait(None)
                self.outcomes = None
            work.cancel()
        return True

    async def _beat(self, period: float) -> None:
        """As fx envoy: once a period. Envoys beat on one Beat stream, as fx envoy does
        (each message counts as a heartbeat, with no latency to time); probes
        (``--keep-beating``) make one unary Heartbeat call a beat and time its answer, and go
        on after a failed one."""
        await asyncio.sleep(random.uniform(0, period))  # not all in step
        if self.keep_beating:
            await self._probe(period)
        else:
            await self._stream_beats(period)

    async def _stream_beats(self, period: float) -> None:
        assert self.stub is not None

        async def beats() -> AsyncIterator[pb.WorkRequest]:
            yield pb.WorkRequest(session=self.session)
            self.stats.hb_ok += 1
            while True:
                await asyncio.sleep(period)
                yield pb.WorkRequest()
                self.stats.hb_ok += 1

        while True:  # as fx envoy: a broken Beat stream is opened again, unless the
            try:     # connection or the session is gone (the work stream ends then too)
                await self.stub.Beat(beats())
                return
            except grpc.aio.AioRpcError as exc:
                self.stats.hb_fail += 1
                self.stats.error("Beat", exc)
                if exc.code() in (grpc.StatusCode.UNAVAILABLE,
                                  grpc.StatusCode.UNAUTHENTICATED):
                    return
            await asyncio.sleep(period / 2)

    async def _probe(self, period: float) -> None:
        assert self.stub is not None
        request = pb.WorkRequest(session=self.session)
        while True:
            await asyncio.sleep(period / 2)
            started = time.perf_counter()
            try:
                await self.stub.Heartbeat(request, timeout=period)
            except grpc.aio.AioRpcError as exc:
                self.stats.hb_fail += 1
                self.stats.error("Heartbeat", exc)
            else:
                self.stats.hb_ok += 1
            self.stats.latencies.append((time.perf_counter() - started) * 1e3)

    async def _handle(self, item: pb.Work) -> None:
        kind = item.WhichOneof("kind")
        self.stats.work[kind or "?"] += 1
        try:
            if kind == "review":
                await self._review(item.experiment, item.review)
            elif kind == "offer":
                await self._report(pb.Report(session=self.session, experiment=item.experiment,
                                             ready=self.name))
                self.stats.answered["ready"] += 1
            elif kind == "chain":
                await self._chain(item.experiment, item.chain)
            elif kind == "end":
                self.packages.pop(item.experiment, None)
                for key in [k for k in self.chains if k[0] == item.experiment]:
                    del self.chains[key]
        except (grpc.aio.AioRpcError, wire.WireError, transport.TransportError) as exc:
            self.stats.error(f"answering {kind}", exc)

    async def _review(self, experiment: str, review: pb.ReviewRequest) -> None:
        if review.bulk_bytes:
            await self._pull(experiment, bulk.PACKAGE, review.bulk_bytes)
        else:
            assembler = self.packages.setdefault(experiment, transport.Assembler("package"))
            if assembler.add(review.package) is None:
                return  # more chunks to come
            del self.packages[experiment]
        await self._report(pb.Report(session=self.session, experiment=experiment,
                                     decision=pb.Decision(
                                         participant=self.name, approved=True, decided_by="sim",
                                         at=time.time(), digest=review.digest,
                                         experiment=experiment, submitter=review.submitter)))
        self.stats.answered["decision"] += 1

    async def _chain(self, experiment: str, chain: pb.ChainRequest) -> None:
        started = time.time()
        if chain.bulk_bytes:
            frame: bytes = await self._pull(experiment, chain.request, chain.bulk_bytes)
        else:
            assembler = self.chains.setdefault((experiment, chain.request),
                                               transport.Assembler(f"state for {chain.step}"))
            got = assembler.add(chain.state)
            if got is None:
                return
            del self.chains[(experiment, chain.request)]
            frame = got
        state = wire.loads(frame, allowed_modules=frozenset())
        state["input"] = self.name
        payload = wire.dumps({"state": state, "artifacts": []})
        head = pb.Report(session=self.session, experiment=experiment, request=chain.request,
                         outcome=pb.ChainOutcome(
                             collaborator=self.name, join_step=self.join_step,
                             tasks=[pb.TaskInfo(step=chain.step, participant=self.name, ok=True,
                                                started_at=started,
                                                finished_at=time.time())]),
                         bulk_bytes=len(payload))
        assert self.channel is not None
        if len(payload) <= bulk.INLINE_BYTES:  # as fx envoy: on its one outcome stream
            await self._push_small(bulk.small_push(head, payload))
        else:
            push = self.channel.stream_unary(bulk.PUSH, request_serializer=None,
                                             response_deserializer=pb.Ack.FromString)
            await push(iter([head.SerializeToString(), *bulk.pieces(payload)]),
                       timeout=bulk.deadline(len(payload)))
        self.stats.answered["outcome"] += 1

    async def _push_small(self, message: bytes) -> None:
        """On this connection's Bulk.PushStream call, opened at its first outcome."""
        assert self.channel is not None
        if self.outcomes is None:
            outcomes: asyncio.Queue[bytes | None] = asyncio.Queue()
            self.outcomes = outcomes

            async def messages() -> AsyncIterator[bytes]:
                yield pb.WorkRequest(session=self.session).SerializeToString()
                while (item := await outcomes.get()) is not None:
                    yield item

            call = self.channel.stream_unary(bulk.PUSH_STREAM, request_serializer=None,
                                             response_deserializer=pb.Ack.FromString)
            self.outcome_call = call(messages())
            await self.outcome_call.initial_metadata()
        if self.outcome_call.done():
            raise transport.TransportError("the outcome stream ended: "
                                           f"{await self.outcome_call.code()}")
        self.outcomes.put_nowait(message)

    async def _pull(self, experiment: str, request: str, total: int) -> bytes:
        assert self.channel is not None
        call = self.channel.unary_stream(bulk.PULL,
                                         request_serializer=pb.PullRequest.SerializeToString,
                                         response_deserializer=None)
        parts = []
        async for piece in call(pb.PullRequest(session=self.session, experiment=experiment,
                                               request=request), timeout=bulk.deadline(total)):
            parts.append(piece)
        data = b"".join(parts)
        if len(data) != total:
            raise transport.TransportError(f"pulled {len(data)} of {total} bytes")
        return data

    async def _report(self, report: pb.Report) -> None:
        assert self.stub is not None
        await self.stub.SendReport(iter([report]), timeout=60)


async def main_async(args: argparse.Namespace) -> None:
    names = [n for n in Path(args.names).read_text().splitlines() if n]
    pki = Path(args.pki)
    stats = Stats()
    envoys = []
    for name in names:
        stem = f"envoy-{safe_filename(name)}"
        credentials = channel_credentials(TlsFiles(pki / "ca.crt", pki / f"{stem}.crt",
                                                   pki / f"{stem}.key"))
        envoys.append(SimEnvoy(name, args.address, credentials, args.join_step, stats,
                               args.keep_beating))
    print(f"ready {len(envoys)}", flush=True)
    go = Path(args.go)
    while not go.exists():
        await asyncio.sleep(0.02)
    tasks = [asyncio.ensure_future(envoy.run()) for envoy in envoys]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    parent = os.getppid()
    try:
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), args.report_every)
            print(stats.line(), flush=True)
            if os.getppid() != parent:  # the benchmark is gone: so are we
                break
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="the director's host:port")
    parser.add_argument("--pki", required=True, help="folder with ca.crt and envoy-NAME.crt/key")
    parser.add_argument("--names", required=True, help="file: one envoy name a line")
    parser.add_argument("--go", required=True, help="start connecting once this file exists")
    parser.add_argument("--join-step", default="join", help="the flow's join step (join)")
    parser.add_argument("--report-every", type=float, default=1.0, help="seconds (1)")
    parser.add_argument("--keep-beating", action="store_true",
                        help="probes: go on heartbeating after a failed heartbeat (its time "
                             "counts as a latency), unlike fx envoy")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(args))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
