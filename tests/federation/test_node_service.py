"""One node per work folder: a second ``fx director start`` / ``fx envoy start`` in a running
node's folder stops at once and touches nothing of it (its review socket keeps working); the
review socket lives in the work folder and nothing of it is left behind."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from fedloom.federation.nodes import nodelock
from fedloom.federation.review.desk import ReviewDesk
from fedloom.federation.review.service import (
    ADDRESS_FILE,
    SOCKET_FOLDER,
    LocalReviewServer,
)
from tests.federation.nodes import FX, Node, fx, lone_envoy, unused_port

# -- one node per folder -------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_director_in_the_same_folder_is_refused_and_the_first_keeps_serving(fed):
    workdir = fed.folder / ".fedloom" / "director"
    address = (workdir / ADDRESS_FILE).read_text()
    socket_path = Path(address.strip().removeprefix("unix:"))
    if len(os.fsencode(workdir.resolve() / SOCKET_FOLDER / "review.sock")) <= \
            nodelock.MAX_SOCKET_PATH:
        assert socket_path.parent == workdir.resolve() / SOCKET_FOLDER
    assert stat.S_IMODE(socket_path.parent.stat().st_mode) == 0o700
    second = Node([*FX, "director", "start", "-c", str(fed.folder / "director.yaml"),
                   *fed.tls_args("director", "director")], fed.folder, fed.env)
    second.wait_for(rf"already running \(pid {fed.director.process.pid}\)")
    assert second.process.wait(timeout=30) == 1
    assert (workdir / ADDRESS_FILE).read_text() == address  # untouched
    assert socket_path.exists()
    listed = fx(["director", "review", "list"], fed.folder)
    assert listed.returncode == 0, listed.stderr
    assert "no experiment awaits review" in listed.stdout


@pytest.mark.slow
def test_a_second_envoy_of_the_same_name_is_refused_and_a_stopped_one_leaves_nothing(
        tmp_path):
    workdir = tmp_path / ".fedloom" / "envoy" / "Oslo"
    with unused_port() as nowhere:
        first = lone_envoy(tmp_path, "Oslo", nowhere)
        try:
            first.wait_for(r"retrying in")  # its review service is up
            address = (workdir / ADDRESS_FILE).read_text()
            second = lone_envoy(tmp_path, "Oslo", nowhere)
            second.wait_for(rf"already running \(pid {first.process.pid}\)")
            assert second.process.wait(timeout=30) == 1
            assert (workdir / ADDRESS_FILE).read_text() == address
            listed = fx(["envoy", "review", "-n", "Oslo", "list"], tmp_path)
            assert listed.returncode == 0, listed.stderr
            assert "no experiment awaits review" in listed.stdout
        finally:
            first.stop()  # SIGTERM: a clean stop
    socket_folder = Path(address.strip().removeprefix("unix:")).parent
    assert not socket_folder.exists() and not (workdir / ADDRESS_FILE).exists()


def test_a_socket_path_too_long_goes_to_a_temporary_folder_that_the_next_start_removes(
        tmp_path):
    workdir = tmp_path / ("w" * nodelock.MAX_SOCKET_PATH) / "envoy"
    desk = ReviewDesk("site", False, workdir)
    nodelock.acquire(workdir, "envoy 'site'")
    try:
        killed = LocalReviewServer(desk, workdir)
        killed.start()
        old_folder = Path(killed.address.removeprefix("unix:")).parent
        assert old_folder.name.startswith("fedloom-review-")
        assert stat.S_IMODE(old_folder.stat().st_mode) == 0o700
        killed._server.stop(0)  # as if killed: no clean-up ran
        assert old_folder.exists()
        again = LocalReviewServer(desk, workdir)  # the next start, holding the lock
        try:
            assert not old_folder.exists()
        finally:
            again.stop()
        assert not Path(again.address.removeprefix("unix:")).parent.exists()
    finally:
        nodelock.release(workdir)


def test_the_lock_names_the_process_that_holds_it(tmp_path):
    holder = Node([sys.executable, "-c", (
        "import sys, threading\nfrom pathlib import Path\n"
        "from fedloom.federation.nodes import nodelock\n"
        "nodelock.acquire(Path(sys.argv[1]), 'a director')\nprint('locked', flush=True)\n"
        "threading.Event().wait()\n"), str(tmp_path / "node")], tmp_path,
        {"PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        holder.wait_for("locked")
        with pytest.raises(nodelock.NodeRunning,
                           match=rf"already running \(pid {holder.process.pid}\)"):
            nodelock.acquire(tmp_path / "node", "a director")
    finally:
        holder.process.kill()
        holder.process.wait(timeout=30)
    nodelock.acquire(tmp_path / "node", "a director")  # released with its holder, kill -9
    nodelock.release(tmp_path / "node")
