"""``fx director status`` and ``fx envoy status``: what a node runs, for its admin, on the node's
machine (through its local socket, like ``fx ... review``).

    fx director status [--ended N] [--json]     # envoys, every user's experiments, limits
    fx envoy status -n NAME [--json]            # its connection, experiments, processes

Run them in the folder the node started in, or pass ``--workdir``. Exit codes: 0 ok, 1 the node
is not running (or does not answer), 2 usage.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from fedloom.errors import FedloomError
from fedloom.federation.overview import (
    ExperimentStatus,
    experiments_table,
    seconds,
    when,
)
from fedloom.federation.review.cli import director_workdir, envoy_workdir
from fedloom.federation.transport.proto import fedloom_pb2 as pb
from fedloom.output import command_console as _out
from fedloom.output import echo_json as _echo_json


def _workdir_option(f: Any) -> Any:
    return click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
                        default=None, help="The node's work folder (default: .fedloom/... "
                        "under the folder it was started in, i.e. here).")(f)


def _json_option(f: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print JSON (schema: docs/operating.md).")(f)


def node_status(workdir: Path, request: pb.StatusRequest) -> pb.NodeStatus:
    """The status of the node running with ``workdir``; FedloomError if it does not answer."""
    import grpc

    from fedloom.federation.review.service import local_channel
    from fedloom.federation.transport.proto import fedloom_pb2_grpc as rpc

    channel = local_channel(workdir)
    try:
        stub = rpc.NodeStub(channel)  # type: ignore[no-untyped-call]
        status: pb.NodeStatus = stub.Status(request, timeout=30)
        return status
    except grpc.RpcError as exc:
        raise FedloomError(f"the node with work folder {workdir} did not give its status: "
                           f"{exc.details() if hasattr(exc, 'details') else exc}") from None
    finally:
        channel.close()


def _node_json(status: pb.NodeStatus) -> dict[str, Any]:
    return {"role": status.role, "name": status.name, "running": True, "pid": status.pid,
            "started_at": status.started_at or None, "version": status.version}


def _t(value: float) -> float | None:
    return value or None


# -- the director -----------------------------------------------------------------------------

def director_json(status: pb.NodeStatus) -> dict[str, Any]:
    state = status.director
    return {**_node_json(status), "address": state.address,
            "envoys": [{"name": e.name, "online": e.online, "since": _t(e.since),
                        "address": e.address, "last_seen": _t(e.last_seen),
                        "experiment": e.experiment, "cert_expiry": _t(e.cert_expiry),
                        "first_seen": _t(e.first_seen)} for e in state.envoys],
            "experiments": [ExperimentStatus.from_message(e).to_json()
                            for e in state.experiments],
            "settings": json.loads(state.settings_json or "{}")}


@click.command("status")
@click.option("--ended", type=click.IntRange(min=0), default=10, show_default=True,
              help="How many ended experiments to show (the newest), besides every one that "
                   "has not ended.")
@_workdir_option
@_json_option
def director_status(ended: int, workdir: Path | None, as_json: bool) -> None:
    """This machine's director: its envoys (online, since when, address, last health check,
    experiment, certificate expiry), every user's experiments, and the limits in force."""
    folder = workdir or director_workdir()
    try:
        status = node_status(folder, pb.StatusRequest(ended=ended))
    except FedloomError as exc:
        if as_json:
            _echo_json({"role": "director", "running": False, "error": str(exc)})
        raise click.ClickException(str(exc)) from exc
    if as_json:
        _echo_json(director_json(status))
        return
    state = status.director
    out = _out()
    out.print(f"director: pid {status.pid}, listening on {state.address}, up "
              f"{seconds(time.time() - status.started_at)}, fedloom {status.version}",
              markup=False)
    envoys = Table(title="envoys", title_justify="left")
    for column in ("envoy", "state", "since", "address", "last health check", "experiment",
                   "certificate expires"):
        envoys.add_column(column)
    for e in state.envoys:
        envoys.add_row(e.name, "online" if e.online else "offline", when(e.since), e.address,
                       when(e.last_seen) if e.online else "", e.experiment,
                       when(e.cert_expiry) or "unknown")
    out.print(envoys if state.envoys else "no envoy has registered")
    experiments = [ExperimentStatus.from_message(e) for e in state.experiments]
    out.print(experiments_table(experiments, "experiments", submitter=True) if experiments
              else "no experiments")
    settings = json.loads(state.settings_json or "{}")
    out.print("settings: " + ", ".join(f"{k}={'-' if v is None else v}"
                                       for k, v in settings.items()), markup=False)


# -- an envoy ---------------------------------------------------------------------------------

def envoy_json(status: pb.NodeStatus) -> dict[str, Any]:
    state = status.envoy
    return {**_node_json(status), "director": state.director,
            "connection": {"state": state.connection, "since": _t(state.since),
                           "error": state.error},
            "experiments": [{"id": x.experiment, "phase": x.phase, "pid": x.pid or None,
                             "alive": x.alive,
                             "exit_code": x.exit_code if x.phase == "exited" else None,
                             "last_step": x.last_step or None,
                             "last_step_at": _t(x.last_step_at)} for x in state.experiments]}


@click.command("status")
@click.option("-n", "--envoy-name", "name", required=True, help="The envoy's name.")
@_workdir_option
@_json_option
def envoy_status(name: str, workdir: Path | None, as_json: bool) -> None:
    """This machine's envoy NAME: its connection to the director (connected, retrying since
    when and why, stopped with an error), its experiments, their collaborator processes (pid,
    alive) and the step each was last given."""
    from fedloom.federation.nodes.status import read_last_stop

    folder = workdir or envoy_workdir(name)
    try:
        status = node_status(folder, pb.StatusRequest())
    except FedloomError as exc:
        last = read_last_stop(folder) or {}
        stopped = (f"; it stopped at {when(last.get('at'))}"
                   + (f" with the error: {last['error']}" if last.get("error") else "")
                   if last else "")
        if as_json:
            _echo_json({"role": "envoy", "name": name, "running": False,
                        "stopped_at": last.get("at"), "error": last.get("error", "")})
        raise click.ClickException(f"envoy '{name}' is not running: {exc}{stopped}") from exc
    if as_json:
        _echo_json(envoy_json(status))
        return
    state = status.envoy
    out = _out()
    out.print(f"envoy '{status.name}': pid {status.pid}, up "
              f"{seconds(time.time() - status.started_at)}, fedloom {status.version}",
              markup=False)
    connection = f"{state.connection} since {when(state.since)}"
    if state.error:
        connection += f": {state.error}"
    out.print(f"director: {state.director}, {connection}", markup=False)
    table = Table(title="experiments", title_justify="left")
    for column in ("experiment", "phase", "process", "alive", "last step", "at"):
        table.add_column(column)
    for x in state.experiments:
        table.add_row(x.experiment, x.phase + (f" (exit code {x.exit_code})"
                                               if x.phase == "exited" else ""),
                      str(x.pid or ""), ("yes" if x.alive else "no") if x.pid else "",
                      x.last_step, when(x.last_step_at))
    out.print(table if state.experiments else "no experiment", markup=False)


# -- stopping ------------------------------------------------------------------------------------

def stop_node(workdir: Path, what: str, timeout: float) -> int:
    """Stops the node running with ``workdir`` gracefully (through its local socket, else by
    SIGTERM to the pid in its ``node.lock``) and waits until it is gone; returns its pid."""
    import os
    import signal

    import grpc

    from fedloom.federation.nodes import nodelock
    from fedloom.federation.review.service import local_channel
    from fedloom.federation.transport.proto import fedloom_pb2_grpc as rpc

    pid = nodelock.holder(workdir)
    if pid is None:
        raise click.ClickException(f"{what} is not running with the work folder {workdir}")
    try:
        channel = local_channel(workdir)
    except FedloomError:  # no socket (yet, or any more): the signal a service manager sends
        channel = None
    asked = False
    if channel is not None:
        with channel:
            try:
                stub = rpc.NodeStub(channel)  # type: ignore[no-untyped-call]
                stub.Stop(pb.StopRequest(), timeout=10)
                asked = True
            except grpc.RpcError:
                pass  # it may be going already; the signal below is the same request
    if not asked:
        if not pid:
            raise click.ClickException(f"{what} holds {workdir / nodelock.LOCK_FILE} but its "
                                       "pid is not in it; stop it with its service manager")
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return pid
    deadline = time.monotonic() + timeout
    while nodelock.holder(workdir) is not None:
        if time.monotonic() > deadline:
            raise click.ClickException(f"{what} (pid {pid}) is still running {timeout:g} s "
                                       "after it was asked to stop")
        time.sleep(0.2)
    return pid


def _timeout_option(f: Any) -> Any:
    return click.option("--timeout", type=click.FloatRange(min=0), default=60,
                        show_default=True, help="Seconds to wait for the node to be gone.")(f)


@click.command("stop")
@_workdir_option
@_timeout_option
def director_stop(workdir: Path | None, timeout: float) -> None:
    """Stop this machine's director gracefully: no new experiment starts, running ones are
    cancelled ("the director is stopping": their submitters get that error), its state is
    saved. The same as SIGTERM (a service manager's stop)."""
    pid = stop_node(workdir or director_workdir(), "the director", timeout)
    click.echo(f"director stopped (pid {pid})")


@click.command("stop")
@click.option("-n", "--envoy-name", "name", required=True, help="The envoy's name.")
@_workdir_option
@_timeout_option
def envoy_stop(name: str, workdir: Path | None, timeout: float) -> None:
    """Stop this machine's envoy NAME gracefully: it tells the director its experiments cannot
    go on here, ends their collaborator processes and leaves. The same as SIGTERM."""
    pid = stop_node(workdir or envoy_workdir(name), f"envoy '{name}'", timeout)
    click.echo(f"envoy '{name}' stopped (pid {pid})")
