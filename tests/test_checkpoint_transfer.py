"""Moving a recorded run between datastores: readable where it lands; hostile archives refused."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from fedloom import Collaborator, FLSpec, LocalRuntime, aggregator, collaborator
from fedloom.checkpoint.transfer import MANIFEST, TransferError, pack_run, unpack_run


class MovedFlow(FLSpec):
    @aggregator
    def start(self):
        self.x = np.ones(3)
        self.names = self.runtime.collaborators
        self.next(self.train, foreach="names")

    @collaborator
    def train(self):
        self.x = self.x * 2
        print(f"trained at {self.input}")
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.x = sum(i.x for i in inputs)
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_a_run_moved_to_another_datastore_reads_there_after_the_original_is_gone(
        metaflow_client: Path) -> None:
    from metaflow import Flow

    source = metaflow_client / "director"
    source.mkdir()
    flow = MovedFlow(checkpoint=True)
    flow.runtime = LocalRuntime(collaborators=[Collaborator("a"), Collaborator("b")])
    flow.run()
    shutil.move(metaflow_client / ".metaflow", source / ".metaflow")
    archive = pack_run(source / ".metaflow", "MovedFlow", flow._run_id)
    shutil.rmtree(source)  # nothing may still point there
    run_dir = unpack_run(archive, metaflow_client / ".metaflow")
    assert run_dir == metaflow_client / ".metaflow" / "MovedFlow" / flow._run_id
    run = Flow("MovedFlow")[flow._run_id]
    assert run.successful
    np.testing.assert_allclose(run.data.x, [4.0, 4.0, 4.0])
    assert sorted(t.stdout.strip() for t in run["train"]) == ["trained at a", "trained at b"]


def test_packing_a_run_that_is_not_there_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(TransferError, match=r"no recorded run MovedFlow/42 under"):
        pack_run(tmp_path, "MovedFlow", "42")


def _archive(files: dict[str, bytes], manifest: dict[str, str] | None,
             link: tuple[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        entries = dict(files)
        if manifest is not None:
            entries[MANIFEST] = json.dumps(manifest).encode()
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if link is not None:
            info = tarfile.TarInfo(link[0])
            info.type, info.linkname = tarfile.SYMTYPE, link[1]
            archive.addfile(info)
    return buffer.getvalue()


GOOD = {"flow": "F", "run_id": "1", "root": "/elsewhere/.metaflow"}


@pytest.mark.parametrize(("files", "manifest", "link", "match"), [
    ({"F/1/x": b""}, None, None, "no fedloom-transfer.json|not a recorded run"),
    ({"../evil": b"x"}, GOOD, None, "not a file of the run"),
    ({"G/1/x": b"x"}, GOOD, None, "not a file of the run"),
    ({}, GOOD, ("F/1/link", "/etc/passwd"), "not a file of the run"),
    ({"F/1/x": b""}, {**GOOD, "run_id": "../.."}, None, "not a plain name"),
    ({"F/1/x": b""}, {"flow": "F"}, None, "incomplete"),
], ids=["no-manifest", "escapes", "other-flow", "symlink", "bad-run-id", "short-manifest"])
def test_an_archive_that_is_not_a_plain_run_is_refused_and_nothing_escapes(
        tmp_path: Path, files: dict[str, bytes], manifest: dict[str, str] | None,
        link: tuple[str, str] | None, match: str) -> None:
    target = tmp_path / "store" / ".metaflow"
    with pytest.raises(TransferError, match=match):
        unpack_run(_archive(files, manifest, link), target)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "store" / "evil").exists()


def test_a_truncated_archive_is_a_clear_error(tmp_path: Path) -> None:
    whole = _archive({"F/1/x": b"y" * 5000}, GOOD)
    with pytest.raises(TransferError, match="could not be unpacked"):
        unpack_run(whole[:1000], tmp_path / ".metaflow")


def test_an_archive_of_another_run_or_rewriting_stored_blobs_changes_nothing(
        tmp_path: Path) -> None:
    target = tmp_path / ".metaflow"
    blob = target / "F" / "data" / "ab" / "abcd"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"the real artifact")
    archive = _archive({"F/1/x": b"", "F/data/ab/abcd": b"POISON"}, GOOD)
    with pytest.raises(TransferError, match="holds run F/1, not the F/2 asked for"):
        unpack_run(archive, target, expected=("F", "2"))
    unpack_run(archive, target, expected=("F", "1"))
    assert blob.read_bytes() == b"the real artifact"  # content-addressed: kept as it was
    assert (target / "F" / "1" / "x").is_file()
