"""``fx pki``: make the federation's CA and certificates, and look at them.

Attach with ``main.add_command(pki)``; the group is usable on its own too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar, cast

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fedloom.federation import pki as lib

T = TypeVar("T")


def _console() -> Console:
    # Made per command, so the width follows the environment the command runs in.
    return Console(highlight=False)


def _or_fail(make: Callable[[], T]) -> T:
    try:
        return make()
    except lib.PkiError as exc:
        raise click.ClickException(str(exc)) from None


def _written(console: Console, paths: lib.CertPaths, what: str) -> None:
    console.print(Text.assemble(("✓ ", "green"), what))
    console.print(f"  certificate  {paths.cert}", markup=False, soft_wrap=True)
    console.print(f"  private key  {paths.key}  (mode 0600: keep it on its own machine)",
                  markup=False, soft_wrap=True)


@click.group("pki")
def pki() -> None:
    """The federation's certificates: a CA, and one certificate per director, envoy and user."""


@pki.command("init")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False),
              help="Where to write ca.crt and ca.key (created if missing).")
@click.option("--name", default="fedloom federation CA", show_default=True,
              help="The CA's common name.")
@click.option("--days", default=3650, show_default=True, type=click.IntRange(min=1),
              help="How long the CA is valid.")
@click.option("--force", is_flag=True,
              help="Replace an existing CA (every certificate it issued stops being trusted).")
def init(directory: str, name: str, days: int, force: bool) -> None:
    """Create a federation CA: DIR/ca.key and the self-signed DIR/ca.crt."""
    paths = _or_fail(lambda: lib.create_ca(Path(directory), name=name, days=days, force=force))
    console = _console()
    _written(console, paths, f"created the federation CA '{name}'")
    console.print(f"  next: fx pki issue --dir {directory} --kind director --name director",
                  markup=False, soft_wrap=True)


@pki.command("issue")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False),
              help="The directory holding the CA (ca.crt, ca.key); the certificate goes there.")
@click.option("--kind", required=True, type=click.Choice(lib.KINDS),
              help="What the certificate is for.")
@click.option("--name", required=True,
              help="The exact name (an envoy's -n name, a user's name); any characters.")
@click.option("--host", "hosts", multiple=True,
              help="Director only: a host name or IP address envoys and users dial "
                   "(repeatable; default: localhost and 127.0.0.1).")
@click.option("--days", default=825, show_default=True, type=click.IntRange(min=1),
              help="How long the certificate is valid (never beyond the CA's end).")
@click.option("--force", is_flag=True, help="Replace an existing certificate and key.")
def issue(directory: str, kind: str, name: str, hosts: tuple[str, ...], days: int,
          force: bool) -> None:
    """Issue a certificate and key for a director, envoy or user, signed by the CA in DIR."""
    paths = _or_fail(lambda: lib.issue_certificate(
        Path(directory), cast(lib.Kind, kind), name, hosts=hosts, days=days, force=force))
    info = _or_fail(lambda: lib.describe_certificate_file(paths.cert))
    console = _console()
    _written(console, paths, f"issued the {kind} certificate of '{name}'")
    console.print(f"  alt names    {', '.join(info.sans)}", markup=False, soft_wrap=True)
    console.print(f"  valid until  {info.not_after:%Y-%m-%d} UTC", markup=False)


@pki.command("show")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON (schema: docs/operating.md).")
def show(file: str, as_json: bool) -> None:
    """Print a certificate's name, kind, subject, issuer, validity and alternative names."""
    path = Path(file)
    info = _or_fail(lambda: lib.describe_certificate_file(path))
    now = datetime.now(timezone.utc)
    if as_json:
        click.echo(json.dumps({
            "path": str(path), "name": info.name, "kind": "ca" if info.is_ca else info.kind,
            "subject": info.subject, "issuer": info.issuer,
            "not_before": info.not_before.timestamp(), "not_after": info.not_after.timestamp(),
            "expired": info.not_after <= now, "sans": list(info.sans),
            "serial": f"{info.serial:x}", "sha256": info.fingerprint_sha256}, indent=2,
            ensure_ascii=False))
        return
    kind = "federation CA" if info.is_ca else info.kind or "unknown (not issued by fx pki)"
    if info.not_after <= now:
        status = Text("EXPIRED", style="red")
    elif info.not_before > now:
        status = Text("not yet valid", style="yellow")
    else:
        status = Text.assemble(("valid", "green"), f" ({(info.not_after - now).days} days left)")
    table = Table(title=str(path), show_header=False, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    rows: list[tuple[str, Text]] = [
        ("name", Text(info.name)),
        ("kind", Text(kind)),
        ("subject", Text(info.subject)),
        ("issuer", Text(info.issuer)),
        ("valid from", Text(f"{info.not_before:%Y-%m-%d %H:%M} UTC")),
        ("valid until", Text(f"{info.not_after:%Y-%m-%d %H:%M} UTC")),
        ("status", status),
        ("alt names", Text("\n".join(info.sans) or "-")),
        ("serial", Text(f"{info.serial:x}")),
        ("sha256", Text(info.fingerprint_sha256)),
    ]
    for label, value in rows:
        table.add_row(label, value)
    _console().print(table)
