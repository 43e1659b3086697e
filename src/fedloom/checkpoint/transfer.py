"""Moving one recorded run between machines: from the director's datastore to the user's.

A run in Metaflow's local datastore is its folder (``<Flow>/<run id>/``), the flow's metadata
folder (``<Flow>/_meta``), and the content-addressed blobs its tasks name in ``*.data.json``
(``<Flow>/data/<sha[:2]>/<sha>``). Metaflow's metadata also stores the datastore's absolute path
(artifact ``location`` and the ``ds-root`` field), so unpacking rewrites that path to where the
run now lives; otherwise the client would look for the artifacts on the director's disk.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from fedloom.errors import FedloomError

MANIFEST = "fedloom-transfer.json"
MAX_FILES = 1_000_000  # a bound on what an archive may unpack, against a hostile sender


class TransferError(FedloomError):
    """A run could not be packed, or an archive is not a run this module packed."""


def pack_run(datastore_root: str | Path, flow_name: str, run_id: str) -> bytes:
    """The run ``flow_name/run_id`` of the datastore at ``datastore_root`` as a tar archive."""
    root = Path(datastore_root)
    run_dir = root / flow_name / run_id
    if not run_dir.is_dir():
        raise TransferError(f"no recorded run {flow_name}/{run_id} under {root}")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        manifest = json.dumps({"flow": flow_name, "run_id": run_id, "root": str(root)}).encode()
        _add_bytes(archive, MANIFEST, manifest)
        for path in _run_files(root, flow_name, run_dir):
            archive.add(path, arcname=path.relative_to(root).as_posix(), recursive=False)
    return buffer.getvalue()


def unpack_run(archive_bytes: bytes | memoryview, datastore_root: str | Path,
               expected: tuple[str, str] | None = None) -> Path:
    """Unpacks an archive made by :func:`pack_run` into the datastore at ``datastore_root``
    (created if needed) and points its metadata there; returns the run's folder.
    ``expected`` = (flow, run id) the archive must be. Content-addressed blobs already in the
    datastore are kept, never overwritten (they may belong to other runs)."""
    root = Path(datastore_root)
    try:
        with tarfile.open(fileobj=io.BytesIO(archive_bytes), mode="r:") as archive:
            manifest = _read_manifest(archive)
            if expected is not None and (manifest["flow"], manifest["run_id"]) != expected:
                raise TransferError(f"the archive holds run {manifest['flow']}/"
                                    f"{manifest['run_id']}, not the {'/'.join(expected)} "
                                    "asked for; refusing it")
            members = [m for m in _checked_members(archive, manifest["flow"])
                       if not _is_existing_blob(root, m.name)]
            root.mkdir(parents=True, exist_ok=True)
            archive.extractall(root, members=members, filter="data")
    except (tarfile.TarError, OSError, KeyError, ValueError) as exc:
        raise TransferError(f"the recorded run could not be unpacked into {root}: {exc}") \
            from exc
    run_dir = root / manifest["flow"] / manifest["run_id"]
    _relocate(run_dir, old_root=manifest["root"], new_root=str(root.resolve()))
    return run_dir


def _run_files(root: Path, flow_name: str, run_dir: Path) -> Iterator[Path]:
    flow_meta = root / flow_name / "_meta"
    if flow_meta.is_dir():
        yield from sorted(p for p in flow_meta.rglob("*") if p.is_file())
    shas: set[str] = set()
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        yield path
        if path.name.endswith(".data.json"):
            shas.update(json.loads(path.read_text()).get("objects", {}).values())
    data = root / flow_name / "data"
    for sha in sorted(shas):
        for blob in (data / sha[:2] / sha, data / sha[:2] / f"{sha}_meta"):
            if blob.is_file():
                yield blob


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def _read_manifest(archive: tarfile.TarFile) -> dict[str, str]:
    try:
        member = archive.extractfile(MANIFEST)
    except KeyError:
        member = None
    if member is None:
        raise TransferError(f"the archive has no {MANIFEST}: it is not a recorded run")
    manifest = json.loads(member.read())
    if not all(isinstance(manifest.get(k), str) and manifest[k]
               for k in ("flow", "run_id", "root")):
        raise TransferError(f"{MANIFEST} is incomplete: {manifest}")
    for key in ("flow", "run_id"):
        if "/" in manifest[key] or manifest[key] in (".", ".."):
            raise TransferError(f"{MANIFEST}: {key} {manifest[key]!r} is not a plain name")
    return dict(manifest)


def _checked_members(archive: tarfile.TarFile, flow_name: str) -> list[tarfile.TarInfo]:
    """Regular files under ``<flow>/`` only: nothing else is extracted."""
    members = []
    for member in archive.getmembers():
        if member.name == MANIFEST:
            continue
        parts = PurePosixPath(member.name).parts
        if not member.isfile() or not parts or parts[0] != flow_name or ".." in parts:
            raise TransferError(f"the archive holds {member.name!r}, which is not a file of "
                                f"the run of {flow_name}; refusing it")
        members.append(member)
    if len(members) > MAX_FILES:
        raise TransferError(f"the archive holds {len(members)} files, more than a run has")
    return members


def _is_existing_blob(root: Path, name: str) -> bool:
    parts = PurePosixPath(name).parts
    return len(parts) > 1 and parts[1] == "data" and (root / name).exists()


def _relocate(run_dir: Path, old_root: str, new_root: str) -> None:
    """Points the run's metadata (artifact locations, ds-root) at ``new_root``."""
    if old_root == new_root:
        return
    for meta in run_dir.rglob("_meta/*.json"):
        record = json.loads(meta.read_text())
        changed = False
        if record.get("location") == f":root:{old_root}":
            record["location"] = f":root:{new_root}"
            changed = True
        if record.get("type") == "ds-root" and record.get("value") == old_root:
            record["value"] = new_root
            changed = True
        if changed:
            temporary = meta.with_suffix(".json.tmp")
            temporary.write_text(json.dumps(record))
            os.replace(temporary, meta)
