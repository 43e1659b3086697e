"""``fx``: the fedloom command line.

Library code raises; this layer turns errors into readable console output and exit codes.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType

import click
from rich.console import Console

from fedloom import __version__
from fedloom.errors import FedloomError, FlowDefinitionError
from fedloom.spec.flowspec import FLSpec, check_flow, flow_picture, graph_of

console = Console(stderr=False, highlight=False)


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
    """Check a flow without running it. TARGET is FILE.py or FILE.py:ClassName."""
    for cls in _load_flows(target):
        problems = check_flow(cls)
        if problems:
            console.print(str(FlowDefinitionError(cls.__name__, problems)), markup=False)
            sys.exit(1)
        console.print(f"[green]ok[/green] {cls.__name__}: {len(graph_of(cls).steps)} steps")


@flow.command("show")
@click.argument("target")
@click.option("--format", "fmt", type=click.Choice(["text", "mermaid", "dot"]),
              default="text", show_default=True, help="How to draw the flow.")
def flow_show(target: str, fmt: str) -> None:
    """Draw a flow's graph. TARGET is FILE.py or FILE.py:ClassName."""
    for cls in _load_flows(target):
        picture = flow_picture(cls)
        text = {"text": picture.text, "mermaid": picture.mermaid, "dot": picture.dot}[fmt]()
        console.print(text, markup=False)


@main.group()
def run() -> None:
    """Inspect recorded runs (flows run with checkpoint=True)."""


@run.command("show")
@click.argument("target")
@click.option("--html", "html_path", type=click.Path(dir_okay=False),
              help="Also write the run's report page to this file.")
def run_show(target: str, html_path: str | None) -> None:
    """Summarise a run: TARGET is FLOW (its latest run) or FLOW/RUN_ID. Reads the store the
    Metaflow client finds from here (or METAFLOW_DATASTORE_SYSROOT_LOCAL)."""
    from fedloom.checkpoint.report import report_from_metaflow

    flow_name, _, run_id = target.partition("/")
    try:
        report = report_from_metaflow(flow_name, run_id or None)
    except FedloomError as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:  # the Metaflow client's own "not found" errors
        raise click.ClickException(f"cannot read {target}: {exc}") from exc
    console.print(report.table())
    if html_path:
        Path(html_path).write_text(report.to_html(), encoding="utf-8")
        console.print(f"report written to {html_path}")


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
