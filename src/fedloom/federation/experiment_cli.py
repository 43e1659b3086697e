"""``fx experiment``: a data scientist's own experiments on a director, from anywhere the
director can be dialed, with their user certificate (as FederatedRuntime's ``director=``).

    fx experiment list  -dh HOST -dp PORT -rc ca.crt -pk user-alice.key -oc user-alice.crt
    fx experiment show ID ...
    fx experiment logs ID [--follow] ...
    fx experiment cancel ID ...

The director's address and the TLS files can also come from the environment
(``FEDLOOM_DIRECTOR_HOST``, ``FEDLOOM_DIRECTOR_PORT``, ``FEDLOOM_ROOT_CERTIFICATE``,
``FEDLOOM_PRIVATE_KEY``, ``FEDLOOM_CERTIFICATE``). ``--json`` prints what a command shows as
JSON (the schema is in docs/operating.md). Exit codes: 0 ok, 1 failed (the director refused or
cannot be reached; ``logs --follow`` of an experiment that did not complete), 2 usage.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from fedloom.errors import FedloomError
from fedloom.output import command_console as out
from fedloom.output import echo_json

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")



def director_options(func: F) -> F:
    """``-dh/-dp`` and ``-rc/-pk/-oc`` (or ``--disable-tls``), as ``fx envoy start`` takes."""
    for option in reversed([
        click.option("-dh", "--director-host", envvar="FEDLOOM_DIRECTOR_HOST", required=True,
                     help="The director's host name (env FEDLOOM_DIRECTOR_HOST)."),
        click.option("-dp", "--director-port", envvar="FEDLOOM_DIRECTOR_PORT", type=int,
                     required=True, help="The director's port (env FEDLOOM_DIRECTOR_PORT)."),
        click.option("--disable-tls", is_flag=True,
                     help="Dial without TLS (only a director started with --disable-tls)."),
        click.option("-rc", "--root-certificate", envvar="FEDLOOM_ROOT_CERTIFICATE",
                     type=click.Path(dir_okay=False),
                     help="The federation's root CA certificate (env FEDLOOM_ROOT_CERTIFICATE)."),
        click.option("-pk", "--private-key", envvar="FEDLOOM_PRIVATE_KEY",
                     type=click.Path(dir_okay=False),
                     help="Your private key (env FEDLOOM_PRIVATE_KEY)."),
        click.option("-oc", "--certificate", envvar="FEDLOOM_CERTIFICATE",
                     type=click.Path(dir_okay=False),
                     help="Your user certificate, from 'fx pki issue --kind user' (env "
                          "FEDLOOM_CERTIFICATE)."),
    ]):
        func = option(func)
    return func


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print JSON (schema: docs/operating.md).")(func)


def runtime_of(options: dict[str, Any]) -> Any:
    """The FederatedRuntime (without collaborators) the options describe."""
    from fedloom.runtime.federated import FederatedRuntime

    files = (options["root_certificate"], options["private_key"], options["certificate"])
    if options["disable_tls"]:
        if any(files):
            raise click.UsageError("--disable-tls cannot be combined with -rc/-pk/-oc (or "
                                   "their FEDLOOM_* environment variables)")
    elif not all(files):
        raise click.UsageError("TLS is the default: give -rc ROOT_CA -pk KEY -oc CERT (your "
                               "user certificate, made with 'fx pki issue --kind user'), or "
                               "--disable-tls for a director started without TLS")
    director = {"director_node_fqdn": options["director_host"],
                "director_port": options["director_port"], "cert_chain": files[0],
                "api_private_key": files[1], "api_cert": files[2]}
    return _or_fail(lambda: FederatedRuntime(director=director,
                                             tls=not options["disable_tls"]))


def _or_fail(make: Callable[[], T]) -> T:
    try:
        return make()
    except FedloomError as exc:
        raise click.ClickException(str(exc)) from exc




@click.group()
def experiment() -> None:
    """Your experiments on a director: list, show, follow their output, cancel."""


@experiment.command("list")
@director_options
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True,
              help="Only the newest this many (0: all).")
@json_option
def list_experiments(limit: int, as_json: bool, **options: Any) -> None:
    """Your experiments, newest first: queued, in review, running, and ended ones."""
    from fedloom.federation.overview import experiments_table

    runtime = runtime_of(options)
    found = _or_fail(lambda: runtime.experiments(limit=limit))
    if as_json:
        echo_json({"experiments": [e.to_json() for e in found]})
    elif found:
        out().print(experiments_table(found, "your experiments"))
    else:
        click.echo("no experiments")


@experiment.command("show")
@click.argument("experiment_id", metavar="ID")
@director_options
@json_option
def show(experiment_id: str, as_json: bool, **options: Any) -> None:
    """One of your experiments: its phase (in review by whom, waiting for which envoys, the
    step and round it runs), times, participants, and why it ended so."""
    from fedloom.federation.overview import experiment_lines

    runtime = runtime_of(options)
    found = _or_fail(lambda: runtime.experiment(experiment_id))
    if as_json:
        echo_json(found.to_json())
    else:
        click.echo("\n".join(experiment_lines(found)))


@experiment.command("logs")
@click.argument("experiment_id", metavar="ID")
@click.option("-f", "--follow", is_flag=True,
              help="Go on printing output as it comes, until the experiment ends (exit code 1 "
                   "if it did not complete). Leaving early cancels nothing.")
@director_options
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object a task, a line each (schema: docs/operating.md).")
def logs(experiment_id: str, follow: bool, as_json: bool, **options: Any) -> None:
    """Every task's output of one of your experiments, attributed [step @ participant]."""
    from fedloom.capture import print_attributed

    runtime = runtime_of(options)
    printed = 0
    try:
        for task in runtime.logs(experiment_id, follow=follow):
            printed += 1
            if as_json:
                click.echo(json.dumps(task.to_json(), ensure_ascii=False))
            else:
                print_attributed(task.step, task.participant, task.stdout, task.stderr)
    except FedloomError as exc:
        raise click.ClickException(str(exc)) from exc
    if not printed and not as_json:
        click.echo(f"experiment {experiment_id}: no task output, yet or any more (the "
                   "director keeps it until 10 minutes after the experiment's end)", err=True)
    sys.stdout.flush()


@experiment.command("cancel")
@click.argument("experiment_id", metavar="ID")
@director_options
def cancel(experiment_id: str, **options: Any) -> None:
    """Cancel one of your experiments, wherever it is: queued, in review or running."""
    runtime = runtime_of(options)
    _or_fail(lambda: runtime.cancel(experiment_id))
    click.echo(f"experiment {experiment_id}: cancelling")
