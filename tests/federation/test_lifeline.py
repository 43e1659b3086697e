"""Experiment processes never outlive their node (kill -9 included), and a collaborator
process that stops answering is found by its envoy: no orphans, no silent hangs."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fedloom import FedloomError
from fedloom.federation.nodes import lifeline, nodelock
from fedloom.runtime.federated import FederatedRuntime
from tests.conftest import SHARED_ENVOYS
from tests.federation.flows import FedAvgFlow
from tests.federation.nodes import Node, experiment_processes, federation, wait_gone

# A node stand-in: starts one child that binds itself to it, from a thread that ends at once
# (Linux ties the parent-death signal to the thread that forked), prints its pid, and waits.
PARENT = """
import multiprocessing, os, re, sys, threading
from fedloom.federation.nodes import lifeline

def child(expected, busy):
    lifeline.bind_to_parent(expected)
    if busy:  # stuck in C code that holds the GIL: no thread of this process runs again
        re.match(r"(a+)+$", "a" * 64 + "b")
    threading.Event().wait()

if __name__ == "__main__":
    how, busy, made = sys.argv[1], sys.argv[2] == "busy", sys.argv[3]
    ctx = lifeline.context() if made == "node" else multiprocessing.get_context(made)
    process = ctx.Process(target=child, args=(os.getpid(), busy), daemon=True)
    starter = lifeline.start if how == "lifeline" else ctx.Process.start
    thread = threading.Thread(target=starter, args=(process,))
    thread.start()
    thread.join()
    print("child", process.pid, flush=True)
    threading.Event().wait()
"""


@pytest.mark.parametrize("how, busy, made", [
    ("lifeline", "busy", "spawn"), ("lifeline", "busy", "node"), ("plain", "idle", "spawn")],
    ids=["started-by-lifeline-stuck-with-the-gil", "forked-by-the-nodes-server-stuck-with-the-gil",
         "plain-start-idle"])
def test_a_child_dies_with_its_parent_process_not_with_the_thread_that_started_it(
        tmp_path, how, busy, made):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = Node([sys.executable, str(script), how, busy, made], tmp_path,
                  {"PYTHONPATH": os.pathsep.join(sys.path)})
    child = int(parent.wait_for(r"child (\d+)").group(1))
    try:
        assert not wait_gone(child, 0)  # the thread that asked for it ended; it lives on
        parent.process.kill()
        # A busy child is ended by the parent-death signal, an idle one by its lifeline too.
        assert wait_gone(child, 30), "the child outlived its parent"
    finally:
        parent.stop()
        if not wait_gone(child, 0):
            os.kill(child, signal.SIGKILL)


def _bound(expected: int) -> None:
    lifeline.bind_to_parent(expected)


@pytest.mark.parametrize("made", ["spawn", "node"])
def test_a_child_whose_parent_is_not_the_expected_one_ends_at_once(made):
    ctx = lifeline.context() if made == "node" else multiprocessing.get_context(made)
    process = ctx.Process(target=_bound, args=(1,))  # "its parent died before it started"
    process.start()
    process.join(timeout=60)
    assert process.exitcode == lifeline.ORPHANED_EXIT_CODE


# A node stand-in that holds its work folder, keeps its multiprocessing files there, starts an
# experiment process from its fork server, says where the server's socket is, and waits.
LOCKED_NODE = """
import multiprocessing, os, sys, threading
from multiprocessing import forkserver
from pathlib import Path
from fedloom.federation.nodes import lifeline, nodelock

def child(expected):
    lifeline.bind_to_parent(expected)
    threading.Event().wait()

if __name__ == "__main__":
    workdir = Path(sys.argv[1])
    nodelock.acquire(workdir, "a node")
    lifeline.keep_temp_files_in(workdir)
    process = lifeline.context().Process(target=child, args=(os.getpid(),), daemon=True)
    lifeline.start(process)
    print("socket", forkserver._forkserver._forkserver_address, flush=True)
    threading.Event().wait()
"""


@pytest.mark.skipif(not isinstance(lifeline.context(), multiprocessing.context.ForkServerContext),
                    reason="experiment processes come from a fork server on Linux only")
def test_a_node_killed_with_kill_9_leaves_its_fork_server_socket_in_its_folder_for_its_next_start(
        tmp_path):
    script = tmp_path / "node.py"
    script.write_text(LOCKED_NODE)
    # A short path, as a Unix socket's address must be (tmp_path is too long for one).
    workdir = Path(tempfile.mkdtemp(prefix="node-"))
    if len(os.fsencode(workdir / lifeline.TEMP_FOLDER / "listener-12345678")) > \
            nodelock.MAX_SOCKET_PATH:
        shutil.rmtree(workdir)
        pytest.skip(f"the temporary folder's path ({workdir}) is too long for a socket in it")
    try:
        env = {"PYTHONPATH": os.pathsep.join(sys.path)}
        first = Node([sys.executable, str(script), str(workdir)], tmp_path, env)
        socket_path = Path(first.wait_for(r"socket (\S+)").group(1))
        assert socket_path.parent == workdir / lifeline.TEMP_FOLDER  # not the system's
        first.process.kill()  # kill -9: its clean-up never runs
        first.process.wait(timeout=30)
        assert socket_path.exists()
        again = Node([sys.executable, str(script), str(workdir)], tmp_path, env)
        try:
            again.wait_for(r"socket (\S+)")
            assert not socket_path.exists(), "the next start left the killed run's socket"
        finally:
            again.stop()
    finally:
        first.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def own_multiprocessing_config(monkeypatch):
    """This process's multiprocessing settings, without a temporary folder yet (restored
    after the test, whatever it sets)."""
    process = multiprocessing.current_process()
    config = {k: v for k, v in process._config.items() if k != "tempdir"}  # type: ignore[attr-defined]
    monkeypatch.setattr(process, "_config", config)
    return config


def test_a_node_holding_a_short_work_folder_keeps_its_multiprocessing_files_there(
        own_multiprocessing_config):
    workdir = Path(tempfile.mkdtemp(prefix="node-"))
    try:
        lifeline.keep_temp_files_in(workdir)  # not locked by this process: nothing changes
        assert "tempdir" not in own_multiprocessing_config
        nodelock.acquire(workdir, "a node")
        (workdir / lifeline.TEMP_FOLDER).mkdir()
        (workdir / lifeline.TEMP_FOLDER / "listener-leftover").touch()  # a killed run's
        lifeline.keep_temp_files_in(workdir)
        folder = workdir.resolve() / lifeline.TEMP_FOLDER
        assert own_multiprocessing_config["tempdir"] == str(folder)
        assert list(folder.iterdir()) == []
        assert folder.stat().st_mode & 0o777 == 0o700
        (folder / "in-use").touch()
        lifeline.keep_temp_files_in(workdir)  # again: the folder in use is left alone
        assert (folder / "in-use").exists()
    finally:
        nodelock.release(workdir)
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_work_folder_too_long_for_a_socket_leaves_multiprocessing_where_it_was(
        tmp_path, own_multiprocessing_config):
    workdir = tmp_path / ("x" * 120)
    nodelock.acquire(workdir, "a node")
    try:
        lifeline.keep_temp_files_in(workdir)
    finally:
        nodelock.release(workdir)
    assert "tempdir" not in own_multiprocessing_config
    assert not (workdir / lifeline.TEMP_FOLDER).exists()


ENVOYS = SHARED_ENVOYS  # the shared federation's, ``fed`` (tests/conftest.py)


@pytest.mark.slow
def test_a_collaborator_process_dies_with_its_envoy_killed_mid_step(fed):
    with ThreadPoolExecutor(1) as pool, socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(60)
        flow = FedAvgFlow(hold_on="New York", hold_port=server.getsockname()[1])
        flow.runtime = FederatedRuntime(collaborators=list(ENVOYS),
                                        director=fed.director_info())
        result = pool.submit(flow.run)
        held, _ = server.accept()  # New York's collaborator is inside its step
        with held:
            envoy = fed.envoys["New York"].process
            [collaborator] = experiment_processes(envoy.pid)
            envoy.kill()  # kill -9: no clean-up runs in the envoy
            assert wait_gone(collaborator, 30), "the collaborator outlived its envoy"
            with pytest.raises(FedloomError, match="envoy 'New York'"):
                result.result(timeout=60)


@pytest.mark.slow
def test_an_aggregator_process_dies_with_its_director_killed_mid_step(tmp_path, monkeypatch):
    import fedloom.runtime.federated as federated
    from tests.federation.blocking_flows import HeldAggregatorFlow

    monkeypatch.setattr(federated, "RECONNECT_SECONDS", 2.0)  # the user stops waiting soon

    with socket.create_server(("127.0.0.1", 0)) as server, \
            federation(tmp_path, {"envoy_one": 1.0}) as fed, \
            ThreadPoolExecutor(1) as pool:
        server.settimeout(60)
        flow = HeldAggregatorFlow(hold_port=server.getsockname()[1])
        flow.runtime = FederatedRuntime(collaborators=["envoy_one"],
                                        director=fed.director_info())
        result = pool.submit(flow.run)
        held, _ = server.accept()  # the aggregator is inside its start step
        with held:
            director = fed.director.process
            [aggregator] = experiment_processes(director.pid)
            director.kill()
            assert wait_gone(aggregator, 30), "the aggregator outlived its director"
            with pytest.raises(FedloomError, match="went away"):  # the director is gone
                result.result(timeout=60)


@pytest.mark.slow
def test_a_stopped_collaborator_process_fails_the_run_within_three_health_checks(tmp_path):
    # A short period, so the test waits three of them; New York alone, so no other envoy
    # starved by a busy machine for three periods can be "lost" first.
    period = 1.0
    with ThreadPoolExecutor(1) as pool, socket.create_server(("127.0.0.1", 0)) as server, \
            federation(tmp_path, {"New York": 3.0}, health_check_period=period) as fed:
        server.settimeout(60)
        flow = FedAvgFlow(hold_on="New York", hold_port=server.getsockname()[1])
        flow.runtime = FederatedRuntime(collaborators=["New York"],
                                        director=fed.director_info())
        result = pool.submit(flow.run)
        held, _ = server.accept()  # New York's collaborator is inside its step
        with held:
            [collaborator] = experiment_processes(fed.envoys["New York"].process.pid)
            os.kill(collaborator, signal.SIGSTOP)  # alive, its pipe open, and silent
            stopped = time.monotonic()
            try:
                with pytest.raises(FedloomError, match=(
                        r"the collaborator process of envoy 'New York' stopped answering "
                        r"\(silent \d+\.\d s")):
                    result.result(timeout=60)  # no straggler policy: without the check, never
                took = time.monotonic() - stopped
            finally:
                if not wait_gone(collaborator, 0):
                    os.kill(collaborator, signal.SIGCONT)
            # three periods of silence and the period the check waits, with room for a busy
            # machine (the relay; the timeout above is what "never" would hit)
            assert took < 4 * period + 15.0, took
            assert wait_gone(collaborator, 30)  # and the envoy killed it
        fed.envoys["New York"].wait_for(r"stopped answering")
        assert fed.envoys["New York"].process.poll() is None  # the envoy itself lives on


# A node stand-in whose child's target lives in a module of its own (as the experiment
# processes' do): the child must not import the node's __main__ again.
MAIN_NOT_AGAIN = """
import multiprocessing, os, sys
from fedloom.federation.nodes import lifeline
from tests.federation.test_lifeline import report_main_modules

if __name__ == "__main__":
    made = sys.argv[1]
    ctx = lifeline.context() if made == "node" else multiprocessing.get_context(made)
    parent, child = ctx.Pipe()
    process = ctx.Process(target=report_main_modules, args=(child,), daemon=True)
    lifeline.start(process)
    print(parent.recv(), flush=True)
    process.join(30)
"""


def report_main_modules(conn) -> None:  # type: ignore[no-untyped-def]
    main = sys.modules.get("__mp_main__")  # the node's __main__, had it been imported again
    conn.send([getattr(main, "__file__", None), "fedloom.cli" in sys.modules])


@pytest.mark.parametrize("made", ["spawn", "node"])
def test_an_experiment_process_does_not_import_the_nodes_main_module_again(tmp_path, made):
    import subprocess

    script = tmp_path / "node_stand_in.py"
    script.write_text(MAIN_NOT_AGAIN + "\nimport fedloom.cli  # the node's own imports\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, str(script), made], capture_output=True, text=True,
                          timeout=120, cwd=root, env={**os.environ, "PYTHONPATH": root})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[None, False]", done.stdout  # not the script, not the CLI


# A node stand-in that warms its fork server up (as a node does when a plan arrives for review),
# waits until the server runs, then starts an experiment process.
WARM_UP = """
import glob, json, os, sys, time
from fedloom.federation.nodes import lifeline
from tests.federation.test_lifeline import report_parent

def fork_servers():
    found = []
    for children in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        for pid in open(children).read().split():
            try:
                if b"multiprocessing.forkserver" in open(f"/proc/{pid}/cmdline", "rb").read():
                    found.append(int(pid))
            except OSError:
                pass
    return found

if __name__ == "__main__":
    lifeline.warm_up()
    deadline = time.monotonic() + 120
    while not fork_servers() and time.monotonic() < deadline:
        time.sleep(0.05)  # polls /proc for the server, within the deadline
    servers = fork_servers()
    ctx = lifeline.context()
    parent, child = ctx.Pipe()
    process = ctx.Process(target=report_parent, args=(child,), daemon=True)
    lifeline.start(process)
    print(json.dumps([servers, parent.recv(), fork_servers()]), flush=True)
    process.join(30)
"""


def report_parent(conn) -> None:  # type: ignore[no-untyped-def]
    conn.send(os.getppid())


def test_a_warmed_up_node_forks_its_experiment_processes_from_the_server_it_started(tmp_path):
    import json
    import subprocess

    script = tmp_path / "warm_up.py"
    script.write_text(WARM_UP)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=180, cwd=root, env={**os.environ, "PYTHONPATH": root})
    assert done.returncode == 0, done.stderr
    servers, parent, after = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(servers) == 1, "warm_up() started no fork server (or several)"
    assert parent == servers[0] and after == servers, "the process came from another server"


def test_the_fork_servers_preload_imports_no_gpu_framework():
    # A process forked after CUDA is set up cannot use it: the server must never import torch
    # (the experiment's own code imports it in the child).
    import subprocess

    code = ("import sys; from fedloom.federation.nodes import lifeline; "
            "[__import__(m) for m in lifeline._PRELOAD]; "
            "print(sorted(m for m in ('torch', 'tensorflow', 'jax', 'ray') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
