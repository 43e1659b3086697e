"""A node's own status, for its admin on its machine (``fx director status``, ``fx envoy
status``): the local service ``Node`` on the node's socket, beside ``Review``.

The director's status is put together on its event loop (its state lives there): the envoys,
every user's experiments and the limits in force. An envoy's comes from its threads: its
connection to the director and its experiments' collaborator processes. An envoy that stopped
for good leaves why in ``last-stop.json`` in its work folder, which ``fx envoy status`` reads
when the envoy no longer answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from fedloom import __version__
from fedloom.federation.nodes.views import experiment_info
from fedloom.federation.store import FINAL_STATES, UNFINISHED_STATES
from fedloom.federation.transport.proto import fedloom_pb2 as pb
from fedloom.federation.transport.proto import fedloom_pb2_grpc as rpc

if TYPE_CHECKING:
    from fedloom.federation.nodes.director import Director
    from fedloom.federation.nodes.envoy import Envoy

log = logging.getLogger(__name__)

LAST_STOP_FILE = "last-stop.json"
DEFAULT_ENDED = 10  # ended experiments fx director status shows, the newest


def _stop(context: grpc.ServicerContext, what: str) -> pb.Ack:
    """Stop this node as a service manager does: SIGTERM, which the node's command turns into
    its graceful stop (see fedloom.cli)."""
    log.info("%s: asked to stop (fx ... stop)", what)
    os.kill(os.getpid(), signal.SIGTERM)
    return pb.Ack(note="stopping")


class DirectorNode(rpc.NodeServicer):
    def __init__(self, director: Director) -> None:
        self._director = director

    def Stop(self, request: pb.StopRequest, context: grpc.ServicerContext) -> pb.Ack:
        return _stop(context, "the director")

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.NodeStatus:
        loop = self._director.loop
        if loop is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the director is not serving yet")
            raise AssertionError("grpc's abort() raises")
        future = asyncio.run_coroutine_threadsafe(self._status(request.ended), loop)
        return future.result(timeout=30)

    async def _status(self, ended: int) -> pb.NodeStatus:
        d = self._director
        assert d.store is not None
        state = pb.DirectorState(address=f"{d.config.listen_host}:{d.port}",
                                 settings_json=json.dumps(director_settings(d)))
        links = dict(d.envoys)
        for record in d.store.envoys():
            link = links.pop(record.name, None)
            if link is None:  # known from before, not connected now
                state.envoys.add(name=record.name, online=False,
                                 since=record.last_offline or 0.0, address=record.address,
                                 cert_expiry=record.cert_expiry or 0.0,
                                 first_seen=record.first_seen)
                continue
            state.envoys.add(name=link.name, online=link.online, since=link.since,
                             address=link.address, last_seen=link.last_seen,
                             experiment=link.experiment, cert_expiry=link.cert_expiry or 0.0,
                             first_seen=record.first_seen)
        records = d.store.experiments(states=UNFINISHED_STATES)
        records += d.store.experiments(states=FINAL_STATES)[:ended]
        records.sort(key=lambda r: r.submitted_at, reverse=True)
        state.experiments.extend(experiment_info(d, r, admin=True) for r in records)
        return pb.NodeStatus(role="director", name="director", pid=os.getpid(),
                             started_at=d.started_at, version=__version__, director=state)


def director_settings(director: Director) -> dict[str, Any]:
    """The limits and settings in force (names as in the config's ``settings``)."""
    config = director.config
    return {"envoy_health_check_period": config.envoy_health_check_period,
            "wait_for_envoys": config.wait_for_envoys,
            "review_experiment": config.review_experiment,
            "review_timeout": config.review_timeout, "visibility": config.visibility,
            **dataclasses.asdict(config.limits)}


class EnvoyNode(rpc.NodeServicer):
    def __init__(self, envoy: Envoy) -> None:
        self._envoy = envoy

    def Stop(self, request: pb.StopRequest, context: grpc.ServicerContext) -> pb.Ack:
        return _stop(context, f"envoy '{self._envoy.config.name}'")

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.NodeStatus:
        envoy = self._envoy
        state = pb.EnvoyNodeState(director=envoy.endpoint.address, connection=envoy.connection,
                                  since=envoy.connection_since, error=envoy.connection_error)
        pending = {p.plan.experiment for p in envoy.desk.pending()}
        for running in envoy.experiments_now():
            process = running.process
            item = state.experiments.add(experiment=running.id, last_step=running.last_step,
                                         last_step_at=running.last_step_at)
            if process is None:
                item.phase = "reviewing" if running.id in pending else "approved"
                continue
            item.pid, item.alive = process.pid or 0, process.is_alive()
            item.phase = "running" if item.alive else "exited"
            if not item.alive and process.exitcode is not None:
                item.exit_code = process.exitcode
        return pb.NodeStatus(role="envoy", name=envoy.config.name, pid=os.getpid(),
                             started_at=envoy.started_at, version=__version__, envoy=state)


def write_last_stop(workdir: Path, error: str) -> None:
    """Why the envoy stopped ('' for a clean stop), for ``fx envoy status`` once it is gone."""
    with contextlib.suppress(OSError):
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / LAST_STOP_FILE).write_text(json.dumps({"at": time.time(), "error": error}))


def read_last_stop(workdir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((workdir / LAST_STOP_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
