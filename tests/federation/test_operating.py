"""Operating a federation, with real processes: a data scientist sees, follows and cancels their
own experiments (``fx experiment``, FederatedRuntime) and nobody else's."""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedloom import FedloomError
from fedloom.federation.localhost import LocalFederation
from fedloom.runtime.federated import FederatedRuntime
from tests.federation.flows import FedAvgFlow
from tests.federation.nodes import (
    ENV,
    FX,
    Node,
    envoy_config,
    experiment_processes,
    federation,
    fx,
    lone_envoy,
    unused_port,
)

pytestmark = pytest.mark.slow

# An experiment naming an envoy that never comes ('ghost') waits for it; the tests cancel it
# and see it cancelled. It must not end by itself meanwhile (wait_for_envoys, 60 s by
# default), however long the commands before the cancel take on a busy machine.
WAIT_UNTIL_CANCELLED = {"wait_for_envoys": 3600}


def as_user(fed: LocalFederation, user: str = "alice") -> list[str]:
    """``-dh/-dp/-rc/-pk/-oc`` for ``user``."""
    info = fed.director_info(user)
    return ["-dh", "127.0.0.1", "-dp", str(fed.port), "-rc", str(info["cert_chain"]),
            "-pk", str(info["api_private_key"]), "-oc", str(info["api_cert"])]


def fx_user(fed: LocalFederation, *args: str, user: str = "alice"
            ) -> subprocess.CompletedProcess[str]:
    return fx([*args, *as_user(fed, user)], fed.folder)


def fx_json(fed: LocalFederation, *args: str, user: str = "alice") -> Any:
    done = fx_user(fed, *args, "--json", user=user)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def submit(pool: ThreadPoolExecutor, fed: LocalFederation, collaborators: list[str],
           user: str = "alice", **flow_args: object) -> tuple[Future[FedAvgFlow], str]:
    """A flow run in the background, and its experiment's id (from the director's log)."""

    def run() -> FedAvgFlow:
        flow = FedAvgFlow(**flow_args)
        flow.runtime = FederatedRuntime(collaborators, director=fed.director_info(user))
        flow.run()
        return flow

    future = pool.submit(run)
    names = re.escape(f"{len(collaborators)} envoy(s): {', '.join(collaborators)}")
    found = fed.director.wait_for(rf"experiment (\S+) submitted by '{user}' for {names}$")
    return future, found.group(1)


class LogLines(logging.Handler):
    """The submitter's log lines, awaitable: its event stream runs in another thread."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self._added = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._added:
            self.lines.append(record.getMessage())
            self._added.notify_all()

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        with self._added:
            if not self._added.wait_for(lambda: any(text in line for line in self.lines),
                                        timeout):
                raise AssertionError(f"no log line with {text!r} within {timeout:g} s; "
                                     f"lines: {self.lines[-10:]}")


def test_a_user_sees_follows_and_cancels_their_experiments_and_nobody_elses(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="fedloom.runtime.federated")
    submitter_log = LogLines()
    logging.getLogger("fedloom.runtime.federated").addHandler(submitter_log)
    try:
        _scenario(tmp_path, caplog, submitter_log)
    finally:
        logging.getLogger("fedloom.runtime.federated").removeHandler(submitter_log)


def _scenario(tmp_path: Path, caplog: pytest.LogCaptureFixture, submitter_log: LogLines) -> None:
    envoys = {"envoy_one": 1.0, "New York": 3.0, "Oslo": 2.0}
    with socket.create_server(("127.0.0.1", 0)) as server, ThreadPoolExecutor(4) as pool, \
            ExitStack() as stack, \
            federation(tmp_path, envoys, reviewing_envoys=["Oslo"], health_check_period=5,
                       settings={"visibility": "activity", **WAIT_UNTIL_CANCELLED}) as fed:
        server.settimeout(60)
        alice = FederatedRuntime(director=fed.director_info("alice"))
        mallory = FederatedRuntime(director=fed.director_info("mallory"))
        finished, done_id = submit(pool, fed, ["envoy_one"], rounds=1)
        finished.result(timeout=60)
        # where people wait: a line per step on the director, progress for the submitter
        fed.director.wait_for(rf"experiment {re.escape(done_id)}: step 'train' round 1 sent "
                              r"to 1 envoy\(s\): envoy_one; the previous step took \d+\.\d\d s")
        submitter_log.wait_for(
            f"experiment {done_id}: round 1/1, step 'train' on 1 envoy (envoy_one)")
        held, running_id = submit(pool, fed, ["New York"], rounds=1, hold_on="New York",
                                  hold_port=server.getsockname()[1])
        hold, _ = server.accept()  # New York's collaborator is inside 'train'
        reviewed, review_id = submit(pool, fed, ["Oslo"], rounds=1)
        fed.envoys["Oslo"].wait_for(rf"experiment {re.escape(review_id)} from 'alice' awaits")
        submitter_log.wait_for(f"experiment {review_id}: waiting for the review by Oslo since")
        waiting, waiting_id = submit(pool, fed, ["envoy_one", "ghost"], rounds=1)
        fed.director.wait_for(rf"experiment {re.escape(waiting_id)}: waiting for envoys ghost")

        listed = fx_json(fed, "experiment", "list")["experiments"]
        by_id = {e["id"]: e for e in listed}
        assert [e["id"] for e in listed] == [waiting_id, review_id, running_id, done_id]
        assert {i: e["phase"] for i, e in by_id.items()} == {
            done_id: "done", running_id: "running", review_id: "reviewing",
            waiting_id: "waiting"}
        assert by_id[review_id]["reviewers"] == ["Oslo"]
        assert by_id[review_id]["detail"] == "in review by Oslo"
        assert by_id[waiting_id]["waiting_for"] == ["ghost"]
        assert (by_id[running_id]["step"], by_id[running_id]["round"]) == ("train", 1)
        done = by_id[done_id]
        assert done["submitter"] == "alice" and done["flow"] == "FedAvgFlow"
        assert done["participants"] == ["envoy_one"] and len(done["digest"]) == 64
        assert done["submitted_at"] <= done["started_at"] <= done["ended_at"]
        assert done["duration"] == pytest.approx(done["ended_at"] - done["submitted_at"],
                                                 abs=0.01)
        assert by_id[waiting_id]["started_at"] is None and by_id[waiting_id]["step"] is None
        # envoys: busy or not, and the experiment only to its submitter
        seen = {e.name: e for e in alice.get_envoys()}
        assert (seen["New York"].busy, seen["New York"].experiment) == (True, running_id)
        assert seen["New York"].online and seen["New York"].last_seen > 0
        assert {(e.name, e.busy, e.experiment) for e in mallory.get_envoys()} == {
            ("envoy_one", False, ""), ("New York", True, ""), ("Oslo", True, "")}
        table = fx_user(fed, "experiment", "list").stdout
        assert all(i in table for i in by_id) and "in review by Oslo" in table
        shown = fx_json(fed, "experiment", "show", running_id)
        assert shown == {**by_id[running_id], "duration": shown["duration"]}
        text = fx_user(fed, "experiment", "show", running_id).stdout
        assert "step          train (round 1, since" in text

        # the finished run's output, attributed; a follower of the running one
        logs = fx_user(fed, "experiment", "logs", done_id)
        assert logs.returncode == 0
        assert "[train @ envoy_one] envoy_one trained round 0" in logs.stdout
        assert "[end @ aggregator] done" in logs.stdout
        records = [json.loads(line) for line in
                   fx_user(fed, "experiment", "logs", done_id, "--json").stdout.splitlines()]
        assert {(r["step"], r["participant"]) for r in records} >= {
            ("start", "aggregator"), ("train", "envoy_one"), ("end", "aggregator")}
        follower = Node([*FX, "experiment", "logs", running_id, "--follow",
                         *as_user(fed)], tmp_path, ENV)
        leaver = Node([*FX, "experiment", "logs", running_id, "--follow",
                       *as_user(fed)], tmp_path, ENV)
        stack.callback(follower.stop)  # if the test fails before they end
        stack.callback(leaver.stop)
        for node in (follower, leaver):
            node.wait_for(r"\[start @ aggregator\] starting with \['New York'\]")
        leaver.process.kill()  # a watcher that leaves cancels nothing

        # cancel: by fx and from Python; nobody else can
        cancelled = fx_user(fed, "experiment", "cancel", waiting_id)
        assert cancelled.returncode == 0, cancelled.stderr
        with pytest.raises(FedloomError, match="cancelled by the user"):
            waiting.result(timeout=60)
        assert alice.experiment(waiting_id).phase == "cancelled"
        again = fx_user(fed, "experiment", "cancel", waiting_id)
        assert again.returncode == 1 and "has ended already (cancelled" in again.stderr
        assert fx_json(fed, "experiment", "list", user="mallory") == {"experiments": []}
        assert mallory.experiments() == []
        for command in ("show", "cancel", "logs"):
            refused = fx_user(fed, "experiment", command, review_id, user="mallory")
            assert refused.returncode == 1
            assert f"experiment {review_id} belongs to another user" in refused.stderr
        with pytest.raises(FedloomError, match="belongs to another user"):
            mallory.experiment(review_id)
        with pytest.raises(FedloomError, match="belongs to another user"):
            mallory.cancel(review_id)
        with pytest.raises(FedloomError, match="belongs to another user"):
            list(mallory.logs(running_id))
        with pytest.raises(FedloomError, match="no experiment 999-0 on this director"):
            alice.experiment("999-0")
        alice.cancel(review_id)
        with pytest.raises(FedloomError, match="cancelled by the user"):
            reviewed.result(timeout=60)

        hold.close()  # the running one completes; its follower ends with it
        np.testing.assert_allclose(held.result(timeout=60).model, [3.0, 3.0, 3.0])
        lines = follower.read_all(timeout=60)
        assert follower.process.returncode == 0
        assert "[train @ New York] New York trained round 0" in lines
        assert lines[-1] == "[end @ aggregator] done"
        assert alice.experiment(running_id).phase == "done"
        assert [t.step for t in alice.logs(running_id)] == ["start", "train", "join", "end"]


def test_visibility_is_a_checked_setting(tmp_path: Path):
    from fedloom.federation.nodes.config import ConfigError, load_director_config

    config = tmp_path / "director.yaml"
    config.write_text("settings:\n  visibility: everything\n")
    with pytest.raises(ConfigError, match=r"settings\.visibility must be one of names, online, "
                                          r"activity \(what users see of envoys\), got "
                                          r"'everything'"):
        load_director_config(config)
    config.write_text("settings: {}\n")
    assert load_director_config(config).visibility == "online"


def test_exit_codes_unreachable_is_1_usage_is_2(tmp_path: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
        unreachable = fx(["experiment", "list", "-dh", "127.0.0.1", "-dp", port,
                          "--disable-tls"], tmp_path)
    assert unreachable.returncode == 1
    assert "cannot connect to the director at 127.0.0.1:" in unreachable.stderr
    no_files = fx(["experiment", "list", "-dh", "127.0.0.1", "-dp", port], tmp_path)
    assert no_files.returncode == 2 and "TLS is the default" in no_files.stderr
    assert fx(["experiment", "show"], tmp_path).returncode == 2


def test_the_admins_see_what_their_nodes_run(tmp_path: Path):
    from fedloom.federation.pki import describe_certificate_file

    with socket.create_server(("127.0.0.1", 0)) as server, ThreadPoolExecutor(2) as pool, \
            federation(tmp_path, {"envoy_one": 1.0, "New York": 3.0},
                       health_check_period=3, settings=WAIT_UNTIL_CANCELLED) as fed:
        server.settimeout(60)
        held, running_id = submit(pool, fed, ["New York"], rounds=1, hold_on="New York",
                                  hold_port=server.getsockname()[1])
        hold, _ = server.accept()
        waiting, waiting_id = submit(pool, fed, ["ghost"], user="mallory", rounds=1)
        fed.director.wait_for(rf"experiment {re.escape(waiting_id)}: waiting for envoys ghost")

        status = json.loads(fx(["director", "status", "--json"], tmp_path).stdout)
        assert (status["role"], status["running"]) == ("director", True)
        assert status["pid"] == fed.director.process.pid
        assert status["address"] == f"127.0.0.1:{fed.port}"
        envoys = {e["name"]: e for e in status["envoys"]}
        new_york = envoys["New York"]
        assert new_york["online"] and new_york["experiment"] == running_id
        assert new_york["address"].startswith("ipv4:127.0.0.1:")
        assert time.time() - new_york["last_seen"] < 30
        assert new_york["since"] <= new_york["last_seen"]
        cert = describe_certificate_file(fed.certs[("envoy", "New York")][0])
        assert new_york["cert_expiry"] == pytest.approx(cert.not_after.timestamp())
        assert envoys["envoy_one"]["experiment"] == ""
        phases = {e["id"]: (e["submitter"], e["phase"]) for e in status["experiments"]}
        assert phases == {running_id: ("alice", "running"), waiting_id: ("mallory", "waiting")}
        assert status["settings"]["max_queued_per_user"] == 32
        assert status["settings"]["envoy_health_check_period"] == 3
        assert status["settings"]["review_timeout"] is None
        text = fx(["director", "status"], tmp_path).stdout
        for shown in (running_id, waiting_id, "mallory", "New York", "ipv4:127.0.0.1:",
                      "max_queued_per_user=32"):
            assert shown in text

        envoy = json.loads(fx(["envoy", "status", "-n", "New York", "--json"], tmp_path).stdout)
        assert envoy["pid"] == fed.envoys["New York"].process.pid
        assert envoy["connection"]["state"] == "connected"
        assert envoy["director"] == f"127.0.0.1:{fed.port}"
        [running] = envoy["experiments"]
        assert (running["id"], running["phase"], running["alive"], running["last_step"]) == (
            running_id, "running", True, "train")
        assert running["pid"] in experiment_processes(fed.envoys["New York"].process.pid)
        text = fx(["envoy", "status", "-n", "New York"], tmp_path).stdout
        assert "connected since" in text and running_id in text

        # an envoy the director refused: stopped, with why
        refused = fed.start_envoy("Bergen", envoy_config("Bergen", 2.0), cert_name="envoy_one")
        refused.read_all(timeout=60)
        gone = fx(["envoy", "status", "-n", "Bergen", "--json"], tmp_path)
        assert gone.returncode == 1 and "envoy 'Bergen' is not running" in gone.stderr
        last = json.loads(gone.stdout)
        assert last["running"] is False and "refused envoy 'Bergen'" in last["error"]

        FederatedRuntime(director=fed.director_info("mallory")).cancel(waiting_id)
        with pytest.raises(FedloomError, match="cancelled by the user"):
            waiting.result(timeout=60)
        hold.close()
        held.result(timeout=60)

    # an envoy whose director is away: retrying, since when, and why
    with unused_port() as nowhere:
        lone = lone_envoy(tmp_path, "Oslo", nowhere)
        try:
            lone.wait_for(r"retrying in")
            envoy = json.loads(fx(["envoy", "status", "-n", "Oslo", "--json"], tmp_path).stdout)
            assert envoy["connection"]["state"] == "retrying"
            assert f"127.0.0.1:{nowhere}" in envoy["connection"]["error"]
        finally:
            lone.stop()
    stopped = fx(["director", "status"], tmp_path)
    assert stopped.returncode == 1 and "no running node" in stopped.stderr


def test_stop_cancels_what_runs_says_why_and_keeps_the_record(tmp_path: Path):
    from tests.federation.test_director_service import restart_director

    with socket.create_server(("127.0.0.1", 0)) as server, ThreadPoolExecutor(2) as pool, \
            federation(tmp_path, {"envoy_one": 1.0, "New York": 3.0},
                       health_check_period=3) as fed:
        server.settimeout(60)
        port = server.getsockname()[1]
        held, running_id = submit(pool, fed, ["New York"], rounds=1, hold_on="New York",
                                  hold_port=port)
        hold, _ = server.accept()
        with hold:
            stopped = fx(["director", "stop"], tmp_path)
            assert stopped.returncode == 0, stopped.stderr
            assert f"director stopped (pid {fed.director.process.pid})" in stopped.stdout
            with pytest.raises(FedloomError, match=r"the director is stopping"):
                held.result(timeout=60)
        assert fed.director.process.wait(timeout=30) == 0
        fed.director.wait_for(rf"experiment {re.escape(running_id)} cancelled: the director "
                              r"is stopping")

        restart_director(fed, tmp_path)  # what it recorded before is what users see
        shown = fx_json(fed, "experiment", "show", running_id)
        assert (shown["phase"], shown["reason"]) == ("cancelled", "the director is stopping")
        for name in ("envoy_one", "New York"):
            fed.director.wait_for(rf"envoy '{name}' registered")

        # an envoy stopping mid-run says so to the director, and its submitter hears it
        held, running_id = submit(pool, fed, ["New York"], rounds=1, hold_on="New York",
                                  hold_port=port)
        hold, _ = server.accept()
        with hold:
            stopped = fx(["envoy", "stop", "-n", "New York"], tmp_path)
            assert stopped.returncode == 0, stopped.stderr
            with pytest.raises(FedloomError, match=r"envoy 'New York' is stopping"):
                held.result(timeout=60)
        assert fed.envoys["New York"].process.wait(timeout=30) == 0

        # without its socket, an envoy is stopped by the pid in its node.lock (SIGTERM)
        (tmp_path / ".fedloom" / "envoy" / "envoy_one" / "review.address").unlink()
        stopped = fx(["envoy", "stop", "-n", "envoy_one"], tmp_path)
        assert stopped.returncode == 0, stopped.stderr
        assert fed.envoys["envoy_one"].process.wait(timeout=30) == 0
        gone = fx(["envoy", "status", "-n", "envoy_one"], tmp_path)
        assert gone.returncode == 1 and "it stopped at" in gone.stderr
        assert "error" not in gone.stderr.split("it stopped at")[1]
        again = fx(["envoy", "stop", "-n", "envoy_one"], tmp_path)
        assert again.returncode == 1 and "envoy 'envoy_one' is not running" in again.stderr


def test_a_node_whose_certificate_ends_within_30_days_warns_at_start(tmp_path: Path):
    from fedloom.federation.pki import create_ca, issue_certificate

    ca = create_ca(tmp_path / "pki")
    paths = issue_certificate(tmp_path / "pki", "envoy", "Oslo", days=10)
    with unused_port() as nowhere:
        envoy = lone_envoy(tmp_path, "Oslo", nowhere,
                           ["-rc", str(ca.cert), "-pk", str(paths.key), "-oc", str(paths.cert)])
        try:
            envoy.wait_for(r"the certificate \S+envoy-Oslo\.crt \('Oslo'\) expires on "
                           r"\S+ \S+ UTC, in 9 days: issue a new one")
        finally:
            envoy.stop()
