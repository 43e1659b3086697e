"""``fx director review`` and ``fx envoy review``: an admin decides on pending experiments of a
node running as a service (no terminal), from the node's own machine.

    fx director review list                 # pending plans
    fx director review show EXPERIMENT      # the plan, as the console prompt shows it
    fx director review approve EXPERIMENT [--digest SHA256]
    fx director review reject EXPERIMENT --reason "..."
    fx director review log                  # every decision this node made (survives restarts)

``fx envoy review -n NAME ...`` does the same for envoy NAME.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import click
from rich.console import Console
from rich.table import Table

from fedloom.errors import FedloomError
from fedloom.federation.review.desk import ReviewLog
from fedloom.federation.transport.proto import fedloom_pb2 as pb
from fedloom.federation.transport.proto import fedloom_pb2_grpc as rpc
from fedloom.output import echo_json as _echo_json

T = TypeVar("T")


def director_workdir(base: Path | None = None) -> Path:
    return (base or Path.cwd()) / ".fedloom" / "director"


def envoy_workdir(name: str, base: Path | None = None) -> Path:
    return (base or Path.cwd()) / ".fedloom" / "envoy" / name


def _call(workdir: Path, call: Callable[[rpc.ReviewStub], T]) -> T:
    import grpc

    from fedloom.federation.review.service import review_stub

    try:
        channel, stub = review_stub(workdir)
    except FedloomError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        return call(stub)
    except grpc.RpcError as exc:
        raise click.ClickException(exc.details() if hasattr(exc, "details") else str(exc)) \
            from None
    finally:
        channel.close()


def _when(at: float) -> str:
    return datetime.fromtimestamp(at).isoformat(sep=" ", timespec="seconds") if at else ""


def _json_option(f: Callable[..., None]) -> Callable[..., None]:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print JSON (schema: docs/operating.md).")(f)




def _pending_json(p: pb.PendingReview) -> dict[str, object]:
    return {"experiment": p.experiment, "submitter": p.submitter, "flow": p.flow_class,
            "digest": p.digest, "since": p.since}


def decision_json(d: pb.Decision) -> dict[str, object]:
    """A review decision as JSON (``fx ... review log --json``)."""
    return {"at": d.at or None, "experiment": d.experiment, "submitter": d.submitter,
            "participant": d.participant, "approved": d.approved, "decided_by": d.decided_by,
            "reason": d.reason, "digest": d.digest}


def _commands(workdir_of: Callable[[click.Context], Path]) -> list[click.Command]:
    """The review subcommands, for a node whose work folder ``workdir_of`` finds."""

    @click.command("list")
    @_json_option
    @click.pass_context
    def list_pending(ctx: click.Context, as_json: bool) -> None:
        """Experiments waiting for this node's decision."""
        reply = _call(workdir_of(ctx), lambda s: s.Pending(pb.PendingRequest(), timeout=10))
        if as_json:
            _echo_json({"pending": [_pending_json(p) for p in reply.pending]})
            return
        table = Table(title="awaiting review", title_justify="left")
        for column in ("experiment", "submitter", "flow", "package sha256", "since"):
            table.add_column(column)
        for p in reply.pending:
            table.add_row(p.experiment, p.submitter, p.flow_class, p.digest, _when(p.since))
        Console(highlight=False).print(table if reply.pending else "no experiment awaits review")

    @click.command("show")
    @click.argument("experiment")
    @_json_option
    @click.pass_context
    def show(ctx: click.Context, experiment: str, as_json: bool) -> None:
        """The plan of EXPERIMENT: steps, what is sent, initial state, source, requirements."""

        def plan(stub: rpc.ReviewStub) -> tuple[pb.ShowReply, pb.PendingReply]:
            return (stub.Show(pb.ShowRequest(experiment=experiment), timeout=10),
                    stub.Pending(pb.PendingRequest(), timeout=10))

        reply, pending = _call(workdir_of(ctx), plan)
        if as_json:
            found = [p for p in pending.pending if p.experiment == experiment]
            head = _pending_json(found[0]) if found else {"experiment": experiment}
            _echo_json({**head, "plan": reply.text})
        else:
            click.echo(reply.text)

    def decide(ctx: click.Context, experiment: str, approve: bool, reason: str,
               digest: str) -> None:
        decision = _call(workdir_of(ctx), lambda s: s.Decide(pb.DecideRequest(
            experiment=experiment, approve=approve, reason=reason, digest=digest), timeout=10))
        verdict = "approved" if decision.approved else "rejected"
        click.echo(f"experiment {decision.experiment} {verdict} (package {decision.digest})")

    @click.command("approve")
    @click.argument("experiment")
    @click.option("--digest", default="", help="The package sha256 you reviewed; refused if "
                  "the pending plan is another package.")
    @click.option("--reason", default="", help="A note for the record.")
    @click.pass_context
    def approve(ctx: click.Context, experiment: str, digest: str, reason: str) -> None:
        """Approve EXPERIMENT: it may run here (this exact package only)."""
        decide(ctx, experiment, True, reason, digest)

    @click.command("reject")
    @click.argument("experiment")
    @click.option("--reason", default="", help="Why; shown to the submitter.")
    @click.pass_context
    def reject(ctx: click.Context, experiment: str, reason: str) -> None:
        """Reject EXPERIMENT: it is aborted everywhere."""
        decide(ctx, experiment, False, reason, "")

    @click.command("log")
    @_json_option
    @click.pass_context
    def history(ctx: click.Context, as_json: bool) -> None:
        """Every decision this node made (read from its log; the node need not run)."""
        from fedloom.federation.review.desk import LOG_FILE

        decisions = ReviewLog(workdir_of(ctx) / LOG_FILE).decisions()
        if as_json:
            _echo_json({"decisions": [decision_json(d) for d in decisions]})
            return
        table = Table(title="decisions", title_justify="left")
        for column in ("at", "experiment", "submitter", "decision", "by", "reason", "package"):
            table.add_column(column)
        for d in decisions:
            table.add_row(_when(d.at), d.experiment, d.submitter,
                          "approved" if d.approved else "rejected", d.decided_by, d.reason,
                          d.digest[:12])
        Console(highlight=False).print(table if decisions else "no decisions yet")

    return [list_pending, show, approve, reject, history]


def _workdir_option(f: Callable[..., None]) -> Callable[..., None]:
    return click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
                        default=None, help="The node's work folder (default: .fedloom/... "
                        "under the folder it was started in, i.e. here).")(f)


@click.group("review")
@_workdir_option
@click.pass_context
def director_review(ctx: click.Context, workdir: Path | None) -> None:
    """Review experiments on this machine's director."""
    ctx.obj = workdir or director_workdir()


@click.group("review")
@click.option("-n", "--envoy-name", "name", required=True, help="The envoy's name.")
@_workdir_option
@click.pass_context
def envoy_review(ctx: click.Context, name: str, workdir: Path | None) -> None:
    """Review experiments on this machine's envoy NAME."""
    ctx.obj = workdir or envoy_workdir(name)


def _node_workdir(ctx: click.Context) -> Path:
    return Path(ctx.obj)  # set by the group, inherited by its subcommands


for _group in (director_review, envoy_review):
    for _command in _commands(_node_workdir):
        _group.add_command(_command)
