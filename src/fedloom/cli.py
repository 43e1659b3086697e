"""``fx``: the fedloom command line.

Library code raises; this layer turns errors into readable console output and exit codes.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO, TypeVar

import click
from rich.console import Console
from rich.logging import RichHandler

from fedloom import __version__
from fedloom.errors import FedloomError, FlowDefinitionError
from fedloom.federation.review.cli import director_workdir, envoy_workdir
from fedloom.output import command_console
from fedloom.spec.flowspec import FLSpec, check_flow, flow_picture, flow_warnings, graph_of

console = Console(stderr=False, highlight=False)
T = TypeVar("T")


@click.group()
@click.version_option(__version__, prog_name="fx")
def main() -> None:
    """fedloom: federated-learning workflows."""


@main.group()
def flow() -> None:
    """Inspect flows defined in a Python file."""


@flow.command("check")
@click.argument("target")
def flow_check(target: str) -> None:
    """Check flows without running them. TARGET is FILE.py or FILE.py:ClassName; every flow
    in the file is checked and every problem reported."""
    broken = 0
    for cls in _load_flows(target):
        problems = check_flow(cls)
        if problems:
            broken += 1
            click.echo(str(FlowDefinitionError(cls.__name__, problems)), err=True)
        else:
            command_console().print(f"[green]ok[/green] {cls.__name__}: {len(graph_of(cls).steps)} "
                            "steps")
        for warning in flow_warnings(cls):
            click.echo(f"warning: {warning}", err=True)
    if broken:
        raise click.exceptions.Exit(1)


@flow.command("show")
@click.argument("target")
@click.option("--format", "fmt", type=click.Choice(["text", "mermaid", "dot"]),
              default="text", show_default=True, help="How to draw the flow.")
def flow_show(target: str, fmt: str) -> None:
    """Draw a flow's graph. TARGET is FILE.py or FILE.py:ClassName."""
    for cls in _load_flows(target):
        picture = flow_picture(cls)
        text = {"text": picture.text, "mermaid": picture.mermaid, "dot": picture.dot}[fmt]()
        click.echo(text)  # as is: Mermaid and DOT break where a line is wrapped


@main.group()
def run() -> None:
    """Recorded runs (flows run with checkpoint=True): show one, or resume one."""


@run.command("show")
@click.argument("target")
@click.option("--html", "html_path", type=click.Path(dir_okay=False),
              help="Also write the run's report page to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (schema: docs/operating.md).")
def run_show(target: str, html_path: str | None, as_json: bool) -> None:
    """Summarise a run: TARGET is FLOW (its latest run) or FLOW/RUN_ID. Reads the store the
    Metaflow client finds from here (or METAFLOW_DATASTORE_SYSROOT_LOCAL)."""
    import json

    from fedloom.checkpoint.report import report_from_metaflow

    report = _read_recorded(target, report_from_metaflow)
    out = command_console()
    if html_path:
        Path(html_path).write_text(report.to_html(), encoding="utf-8")
    if as_json:
        click.echo(json.dumps({
            "flow": report.flow_name, "run_id": report.run_id, "status": report.status,
            "tasks": [{"step": t.step, "task_id": t.task_id, "participant": t.participant,
                       "ok": t.ok, "started_at": t.started_at, "finished_at": t.finished_at,
                       "seconds": round(t.seconds, 6)} for t in report.tasks]},
            indent=2, ensure_ascii=False))
        return
    out.print(report.table())
    if html_path:
        out.print(f"report written to {html_path}", markup=False)


def _read_recorded(target: str, read: Callable[[str, str | None], T]) -> T:
    """What ``read`` makes of the recorded run TARGET (FLOW, its latest run, or FLOW/RUN_ID);
    a clear command-line error when it cannot be read."""
    flow_name, _, run_id = target.partition("/")
    try:
        return read(flow_name, run_id or None)
    except FedloomError as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:  # the Metaflow client's own "not found" errors
        raise click.ClickException(f"cannot read {target}: {exc}") from exc


@run.command("metrics")
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (schema: docs/operating.md).")
@click.option("--mlflow", "to_mlflow", is_flag=True,
              help="Also export the run's metrics and parameters to MLflow.")
@click.option("--tracking-uri", help="With --mlflow: where (default: MLFLOW_TRACKING_URI, else "
              "MLflow's own default).")
@click.option("--experiment", help="With --mlflow: the MLflow experiment (default: the flow's "
              "name).")
def run_metrics(target: str, as_json: bool, to_mlflow: bool, tracking_uri: str | None,
                experiment: str | None) -> None:
    """The metrics a run logged (fedloom.log_metric): TARGET is FLOW (its latest run) or
    FLOW/RUN_ID, recorded with checkpoint=True and read from the store the Metaflow client
    finds from here (or METAFLOW_DATASTORE_SYSROOT_LOCAL)."""
    import json

    from fedloom.tracking.recorded import recorded_metrics
    from fedloom.tracking.views import metrics_json, metrics_table

    flow_name, _, run_id = target.partition("/")
    metrics = _read_recorded(target, recorded_metrics)
    exported = ""
    if to_mlflow:
        from fedloom.tracking.mlflow_export import to_mlflow as export

        try:
            exported = export(metrics, tracking_uri=tracking_uri, experiment=experiment)
        except FedloomError as exc:
            raise click.ClickException(str(exc)) from exc
    if as_json:
        document = metrics_json(metrics)
        if to_mlflow:
            document["mlflow_run_id"] = exported
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
        return
    out = command_console()
    title = f"{flow_name}/{metrics.run_id or run_id or '(latest)'}: {len(metrics)} values"
    out.print(metrics_table(metrics, title) if metrics else f"{title} (none logged)",
              markup=False)
    if exported:
        out.print(f"exported to MLflow run {exported}", markup=False)


@run.command("resume", context_settings={"ignore_unknown_options": True})
@click.argument("script", type=click.Path(exists=True, dir_okay=False))
@click.argument("target")
@click.argument("script_args", nargs=-1, type=click.UNPROCESSED)
def run_resume(script: str, target: str, script_args: tuple[str, ...]) -> None:
    """Run SCRIPT as usual (it builds its runtime and calls flow.run()), except that its run of
    the flow named in TARGET (FLOW/RUN_ID) resumes that run from its checkpoint. Arguments
    after TARGET go to SCRIPT."""
    import runpy

    from fedloom.spec.flowspec import resume_next_run, resume_pending

    flow_name, _, run_id = target.partition("/")
    if not flow_name or not run_id:
        raise click.BadParameter("give the run as FLOW/RUN_ID (fx run show FLOW lists them)",
                                 param_hint="TARGET")
    resume_next_run(flow_name, run_id)
    sys.argv = [script, *script_args]
    sys.path.insert(0, str(Path(script).resolve().parent))
    runpy.run_path(script, run_name="__main__")
    if resume_pending():
        raise click.ClickException(f"{script} never ran a flow named {flow_name}, so nothing "
                                   "was resumed")


def _tls_options(func: Any) -> Any:
    for option in reversed([
        click.option("--disable-tls", is_flag=True, help="Run without TLS (insecure: logged)."),
        click.option("-rc", "--root-certificate", type=click.Path(dir_okay=False),
                     help="The federation's root CA certificate."),
        click.option("-pk", "--private-key", type=click.Path(dir_okay=False),
                     help="This node's private key."),
        click.option("-oc", "--certificate", type=click.Path(dir_okay=False),
                     help="This node's certificate (signed by the root CA)."),
    ]):
        func = option(func)
    return func


def _tls_files(disable_tls: bool, root: str | None, key: str | None,
               cert: str | None) -> Any:
    from fedloom.federation.pki import TlsFiles

    if disable_tls:
        if root or key or cert:
            raise click.UsageError("--disable-tls cannot be combined with -rc/-pk/-oc")
        return None
    if not (root and key and cert):
        raise click.UsageError("TLS is the default: give -rc ROOT_CA -pk KEY -oc CERT (make "
                               "them with 'fx pki'), or --disable-tls to run insecurely")
    return TlsFiles(Path(root), Path(cert), Path(key))


def _attach_pki() -> None:
    from fedloom.federation.experiment_cli import experiment
    from fedloom.federation.pki_cli import pki

    main.add_command(pki)
    main.add_command(experiment)


_attach_pki()


def _attach_review() -> None:
    from fedloom.federation.node_cli import (
        director_status,
        director_stop,
        envoy_status,
        envoy_stop,
    )
    from fedloom.federation.review.cli import director_review, envoy_review

    director.add_command(director_review)
    envoy.add_command(envoy_review)
    director.add_command(director_status)
    envoy.add_command(envoy_status)
    director.add_command(director_stop)
    envoy.add_command(envoy_stop)


@main.group()
def director() -> None:
    """The director: the federation's long-lived coordinator."""


@director.command("start")
@click.option("-c", "--director-config-path", "config_path", required=True,
              type=click.Path(dir_okay=False), help="The director's YAML config.")
@_tls_options
def director_start(config_path: str, disable_tls: bool, root_certificate: str | None,
                   private_key: str | None, certificate: str | None) -> None:
    """Start a director and serve until interrupted."""
    from fedloom.federation.nodes import lifeline, nodelock
    from fedloom.federation.nodes.director import Director
    from fedloom.federation.pki import server_credentials

    _logging()
    # One node per work folder, and before anything is written (a second start must leave the
    # running node's files alone).
    _or_exit(lambda: nodelock.acquire(director_workdir(), "a director"))
    lifeline.keep_temp_files_in(director_workdir())
    _interrupt_on_sigterm()
    config = _or_exit(lambda: _load_config(config_path))
    files = _tls_files(disable_tls, root_certificate, private_key, certificate)
    credentials = _or_exit(lambda: server_credentials(files)) if files else None
    _warn_if_expiring(files)
    node = Director(config, credentials, director_workdir())
    _prompt_on_console(node.desk)
    port = _or_exit(node.start)
    console.print(f"director listening on {config.listen_host}:{port}"
                  f"{'' if files else ' (TLS DISABLED)'}", markup=False)
    sys.stdout.flush()
    try:
        node.wait()
    except KeyboardInterrupt:
        node.stop()


@main.group()
def envoy() -> None:
    """An envoy: serves one site's data to the federation."""


@envoy.command("start")
@click.option("-n", "--envoy-name", "name", required=True, help="This envoy's name.")
@click.option("-ec", "--envoy-config-path", "config_path", required=True,
              type=click.Path(dir_okay=False), help="The envoy's YAML config.")
@click.option("-dh", "--director-host", required=True, help="The director's host name.")
@click.option("-dp", "--director-port", required=True, type=int, help="The director's port.")
@_tls_options
def envoy_start(name: str, config_path: str, director_host: str, director_port: int,
                disable_tls: bool, root_certificate: str | None, private_key: str | None,
                certificate: str | None) -> None:
    """Start an envoy and serve until interrupted (it reconnects by itself, and stops when
    retrying cannot help: a certificate refused, TLS on one side only)."""
    from fedloom.federation.nodes import lifeline, nodelock
    from fedloom.federation.nodes.config import load_envoy_config
    from fedloom.federation.nodes.config_check import check_envoy_config
    from fedloom.federation.nodes.envoy import Envoy
    from fedloom.federation.pki import channel_credentials
    from fedloom.federation.transport.channels import Endpoint

    _logging()
    _or_exit(lambda: nodelock.acquire(envoy_workdir(name), f"envoy '{name}'"))
    lifeline.keep_temp_files_in(envoy_workdir(name))
    _interrupt_on_sigterm()
    config = _or_exit(lambda: load_envoy_config(config_path, name))
    _or_exit(lambda: check_envoy_config(config))
    files = _tls_files(disable_tls, root_certificate, private_key, certificate)
    credentials = _or_exit(lambda: channel_credentials(files)) if files else None
    _warn_if_expiring(files)
    node = Envoy(config, Endpoint(director_host, director_port), credentials,
                 envoy_workdir(name), tls_files=files)
    _prompt_on_console(node.desk)
    console.print(f"envoy '{name}' connecting to {director_host}:{director_port}", markup=False)
    sys.stdout.flush()
    try:
        _or_exit(node.run)
    except KeyboardInterrupt:
        node.stop()


CERTIFICATE_WARNING_DAYS = 30


def _warn_if_expiring(files: Any) -> None:
    """A node whose certificate ends soon says so when it starts (it stops being trusted
    then, and peers refuse it)."""
    if files is None:
        return
    from fedloom.federation.pki import expires_soon

    warning = expires_soon(files.cert, CERTIFICATE_WARNING_DAYS)
    if warning:
        logging.getLogger("fedloom.cli").warning("%s", warning)


def _interrupt_on_sigterm() -> None:
    """A service manager's stop (SIGTERM) ends a node as Ctrl-C does: cleanly (its experiment
    processes stopped, its review socket and address removed)."""
    import signal

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _prompt_on_console(desk: Any) -> None:
    """In a terminal, plans are shown and decided at the prompt (fx ... review works too)."""
    if desk.review and sys.stdin is not None and sys.stdin.isatty():
        from fedloom.federation.review.console import ConsolePrompter

        ConsolePrompter(desk, sys.stdin, sys.stdout).start()


def _load_config(path: str) -> Any:
    """The director's config, its private attributes' module and names checked."""
    from fedloom.federation.nodes.config import load_director_config
    from fedloom.federation.nodes.config_check import check_director_config

    config = load_director_config(path)
    check_director_config(config)
    return config


def _or_exit(make: Callable[[], T]) -> T:
    try:
        return make()
    except FedloomError as exc:
        raise click.ClickException(str(exc)) from exc


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, handlers=[_log_handler(sys.stderr)])


def _log_handler(stream: TextIO) -> logging.Handler:
    """Rich, wrapped records for a person at a terminal; for a file or a log collector, one
    record a line with its ISO time, never wrapped (ids stay whole, lines stay greppable)."""
    if stream.isatty():
        handler: logging.Handler = RichHandler(console=Console(file=stream), show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(_LineFormatter())
    return handler


class _LineFormatter(logging.Formatter):
    """``2025-01-31T12:00:00.123+01:00 INFO fedloom.federation.nodes.director: message``; line
    breaks inside a record (a traceback) are written as ``\\n``, so one line is one record."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created).astimezone().isoformat(
            timespec="milliseconds")

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\r", "").replace("\n", "\\n")


def _load_flows(target: str) -> list[type[FLSpec]]:
    path_text, _, class_name = target.partition(":")
    path = Path(path_text)
    if not path.is_file():
        raise click.BadParameter(f"no such file: {path}", param_hint="TARGET")
    module = _import_file(path)
    flows = [obj for name, obj in vars(module).items()
             if inspect.isclass(obj) and issubclass(obj, FLSpec) and obj is not FLSpec
             and obj.__module__ == module.__name__ and (not class_name or name == class_name)]
    if not flows:
        what = f"class {class_name!r}" if class_name else "any FLSpec subclass"
        raise click.BadParameter(f"{path} defines no {what}", param_hint="TARGET")
    return flows


def _import_file(path: Path) -> ModuleType:
    name = f"fx_flow_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise click.BadParameter(f"cannot import {path}", param_hint="TARGET")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise click.ClickException(f"importing {path} failed: {type(exc).__name__}: {exc}") \
            from exc
    finally:
        sys.path.pop(0)
    return module


_attach_review()


if __name__ == "__main__":
    main()
