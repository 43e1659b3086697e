"""Plan review with real director and envoy processes: the proposal's scenarios A (the director
rejects), B (an envoy rejects) and C (all approve), answered through ``fx ... review`` and
through the console prompt in a pseudo-terminal; defaults, mixed flags, the review log."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from fedloom import ExperimentRejected
from fedloom.federation.localhost import LocalFederation
from fedloom.runtime.federated import FederatedRuntime
from tests.federation import nodes
from tests.federation.flows import FedAvgFlow
from tests.federation.nodes import ROOT, federation

pytestmark = pytest.mark.slow

ENVOYS = {"envoy_one": 1.0, "New York": 3.0}


ADMIN_ENV = {"PYTHONPATH": str(ROOT), "COLUMNS": "200", "PATH": ""}


def fx_run(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """An admin's fx command on the node's machine (from the folder the node started in)."""
    return nodes.fx(list(args), folder, env=ADMIN_ENV)


def fx(folder: Path, *args: str) -> str:
    """The output of fx_run, which must succeed."""
    done = fx_run(folder, *args)
    assert done.returncode == 0, f"fx {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def submit(fed: LocalFederation, pool: ThreadPoolExecutor,
           **flow_args: object) -> tuple[Future[FedAvgFlow], FederatedRuntime]:
    """The user's run(), in the background: it waits for the decisions."""
    flow = FedAvgFlow(**flow_args)
    runtime = FederatedRuntime(collaborators=list(ENVOYS), director=fed.director_info())
    flow.runtime = runtime

    def run() -> FedAvgFlow:
        flow.run()
        return flow

    return pool.submit(run), runtime


@pytest.fixture(scope="module")
def console_director(tmp_path_factory):  # type: ignore[no-untyped-def]
    """ENVOYS and a director that reviews at its console (a pseudo-terminal), for the tests
    of that console."""
    shared = nodes.SharedFederation(
        lambda folder: federation(folder, ENVOYS, director_review=True, terminal=True),
        tmp_path_factory, "console-director")
    yield shared
    shared.close()


@pytest.fixture(scope="module")
def reviewing_director(tmp_path_factory):  # type: ignore[no-untyped-def]
    """ENVOYS and a director that reviews (fx ... review), envoys that do not."""
    shared = nodes.SharedFederation(
        lambda folder: federation(folder, ENVOYS, director_review=True), tmp_path_factory,
        "reviewing-director")
    yield shared
    shared.close()


def awaiting(node: object, experiment: str = r"\S+") -> str:
    """The id of the experiment ``node`` says awaits review."""
    return node.wait_for(rf"experiment ({experiment}) from 'alice' awaits review").group(1)


def test_scenario_c_all_approve_with_review_commands_and_review_on_by_default(tmp_path):
    # The director's config leaves review_experiment out: review is on by default.
    with ThreadPoolExecutor(1) as pool, \
            federation(tmp_path, ENVOYS, director_review=None, reviewing_envoys=ENVOYS) as fed:
        result, runtime = submit(fed, pool, rounds=1, model=np.array([5.0, 0.0, 0.0]))
        experiment = awaiting(fed.director)
        assert experiment in fx(tmp_path, "director", "review", "list")
        [pending] = json.loads(fx(tmp_path, "director", "review", "list", "--json"))["pending"]
        assert (pending["experiment"], pending["submitter"], pending["flow"]) == (
            experiment, "alice", "FedAvgFlow")
        shown = json.loads(fx(tmp_path, "director", "review", "show", experiment, "--json"))
        assert shown["digest"] == pending["digest"] and "def join(self, inputs):" in shown["plan"]
        # the director serves on; the submitter sees who reviews
        assert {e.name for e in runtime.get_envoys() if e.online} == set(ENVOYS)
        assert runtime.experiment(experiment).reviewers == ("director",)
        plan = fx(tmp_path, "director", "review", "show", experiment)
        for shown in ("submitted by 'alice'", "flow FedAvgFlow", "train", "collaborator",
                      "start -> train", "model", "numpy.ndarray", "def join(self, inputs):",
                      "envoy_one, New York"):
            assert shown in plan
        assert "envoy_data" not in plan and "private_attributes.py" not in plan
        digest = re.search(r"package sha256 ([0-9a-f]{64})", plan).group(1)
        fx(tmp_path, "director", "review", "approve", experiment, "--digest", digest)
        for name in ENVOYS:
            awaiting(fed.envoys[name], re.escape(experiment))
            assert "flow FedAvgFlow" in fx(tmp_path, "envoy", "review", "-n", name, "show",
                                           experiment)
            fx(tmp_path, "envoy", "review", "-n", name, "approve", experiment)
        flow = result.result(timeout=120)
    np.testing.assert_allclose(flow.model, [7.0, 2.0, 2.0])
    assert [(d.participant, d.verdict, d.decided_by) for d in runtime.last_review] == [
        ("director", "approved", "fx review"), ("envoy_one", "approved", "fx review"),
        ("New York", "approved", "fx review")]
    logged = fx(tmp_path, "director", "review", "log")  # kept on disk, the node need not run
    assert experiment in logged and "approved" in logged
    [decision] = json.loads(fx(tmp_path, "director", "review", "log", "--json"))["decisions"]
    assert (decision["experiment"], decision["approved"], decision["decided_by"]) == (
        experiment, True, "fx review")


def test_scenario_a_the_director_rejects_and_nothing_reaches_the_envoys(tmp_path):
    with ThreadPoolExecutor(1) as pool, \
            federation(tmp_path, ENVOYS, director_review=True, reviewing_envoys=ENVOYS) as fed:
        result, _runtime = submit(fed, pool)
        experiment = awaiting(fed.director)
        fx(tmp_path, "director", "review", "reject", experiment, "--reason", "not this week")
        with pytest.raises(ExperimentRejected, match=r"director \(not this week\)") as info:
            result.result(timeout=60)
        fed.director.wait_for(rf"experiment {re.escape(experiment)} rejected in review")
        for name in ENVOYS:  # the plan never went to the envoys
            assert "no decisions yet" in fx(tmp_path, "envoy", "review", "-n", name, "log")
            assert not any(experiment in line for line in fed.envoys[name].seen)
    verdicts = {d.participant: (d.verdict, d.reason) for d in info.value.decisions}
    assert verdicts["director"] == ("rejected", "not this week")
    assert verdicts["envoy_one"][0] == verdicts["New York"][0] == "not asked"
    logged = fx(tmp_path, "director", "review", "log")  # the node has stopped: the log remains
    assert experiment in logged and "not this week" in logged


def test_scenario_b_an_envoy_rejects_with_mixed_flags_and_every_site_cleans_up(tmp_path):
    # The director and envoy_one approve automatically; New York's admin decides.
    with ThreadPoolExecutor(1) as pool, \
            federation(tmp_path, ENVOYS, director_review=False,
                       reviewing_envoys={"New York"}) as fed:
        result, _runtime = submit(fed, pool)
        experiment = awaiting(fed.envoys["New York"])
        fx(tmp_path, "envoy", "review", "-n", "New York", "reject", experiment, "--reason",
           "data is embargoed")
        with pytest.raises(ExperimentRejected, match="New York") as info:
            result.result(timeout=60)
        fed.envoys["envoy_one"].wait_for(rf"experiment {re.escape(experiment)} ended")
        assert "no experiment awaits review" in fx(tmp_path, "envoy", "review", "-n",
                                                   "envoy_one", "list")
        for name in ENVOYS:  # no package, work folder or process was left behind
            assert not (tmp_path / ".fedloom" / "envoy" / name / "experiments" /
                        experiment).exists()
        # The federation serves the next experiment (New York's admin approves this one).
        again, _ = submit(fed, pool, rounds=1)
        second = awaiting(fed.envoys["New York"], r"(?!" + re.escape(experiment) + r")\S+")
        fx(tmp_path, "envoy", "review", "-n", "New York", "approve", second)
        np.testing.assert_allclose(again.result(timeout=120).model, [2.0, 2.0, 2.0])
    verdicts = {d.participant: (d.verdict, d.decided_by, d.reason) for d in info.value.decisions}
    assert verdicts == {
        "director": ("approved", "auto (review off)", ""),
        "envoy_one": ("approved", "auto (review off)", ""),
        "New York": ("rejected", "fx review", "data is embargoed")}


def test_the_first_rejection_ends_the_review_and_withdraws_the_other_plans(tmp_path):
    with ThreadPoolExecutor(1) as pool, \
            federation(tmp_path, ENVOYS, reviewing_envoys=ENVOYS) as fed:
        result, _runtime = submit(fed, pool)
        experiment = awaiting(fed.envoys["New York"])
        awaiting(fed.envoys["envoy_one"], re.escape(experiment))
        fx(tmp_path, "envoy", "review", "-n", "New York", "reject", experiment)
        with pytest.raises(ExperimentRejected) as info:
            result.result(timeout=60)
        fed.envoys["envoy_one"].wait_for(
            rf"experiment {re.escape(experiment)} withdrawn before review")
        assert "no experiment awaits review" in fx(tmp_path, "envoy", "review", "-n",
                                                   "envoy_one", "list")
    assert [d.verdict for d in info.value.decisions] == ["approved", "withdrawn", "rejected"]


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
@pytest.mark.parametrize("answer", ["approve", "reject"])
def test_the_director_decides_at_its_console_prompt(console_director, answer):
    fed = console_director.ready()
    with ThreadPoolExecutor(1) as pool:
        result, runtime = submit(fed, pool, rounds=1)
        prompt = fed.director.wait_for(r"Approve experiment (\S+) from 'alice'\? \[y\]es")
        assert any("Steps (where each runs):" in line for line in fed.director.seen)
        if answer == "approve":
            fed.director.type("y\n")
            np.testing.assert_allclose(result.result(timeout=120).model, [2.0, 2.0, 2.0])
            decision = runtime.last_review[0]
            assert (decision.verdict, decision.decided_by) == ("approved", "console")
        else:
            fed.director.type("n\n")
            fed.director.wait_for(r"Reason \(optional")
            fed.director.type("wrong flow\n")
            with pytest.raises(ExperimentRejected, match=r"wrong flow"):
                result.result(timeout=60)
        logged = fx(fed.folder, "director", "review", "log")
        assert prompt.group(1) in logged and "console" in logged


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_a_node_at_a_console_can_also_be_decided_with_fx_review(console_director):
    fed = console_director.ready()
    with ThreadPoolExecutor(1) as pool:
        result, runtime = submit(fed, pool, rounds=1)
        experiment = fed.director.wait_for(r"Approve experiment (\S+) from 'alice'\?").group(1)
        fx(fed.folder, "director", "review", "approve", experiment)  # from another shell
        np.testing.assert_allclose(result.result(timeout=120).model, [2.0, 2.0, 2.0])
        fed.director.type("n\n")  # the prompt's late answer changes nothing
        fed.director.wait_for(rf"experiment {re.escape(experiment)} was already decided")
    assert runtime.last_review[0].decided_by == "fx review"


def test_a_review_command_for_an_unknown_experiment_or_stale_digest_is_refused(
        reviewing_director):
    fed = reviewing_director.ready()
    with ThreadPoolExecutor(1) as pool:
        result, _runtime = submit(fed, pool, rounds=1)
        experiment = awaiting(fed.director)
        wrong = fx_run(fed.folder, "director", "review", "approve", experiment, "--digest",
                       "0" * 64)
        assert wrong.returncode != 0 and "not the" in wrong.stderr
        unknown = fx_run(fed.folder, "director", "review", "approve", "no-such")
        assert unknown.returncode != 0 and "no experiment no-such awaits review" in unknown.stderr
        fx(fed.folder, "director", "review", "approve", experiment)
        np.testing.assert_allclose(result.result(timeout=120).model, [2.0, 2.0, 2.0])


def test_the_user_can_cancel_while_the_plan_awaits_review(reviewing_director):
    fed = reviewing_director.ready()
    with ThreadPoolExecutor(1) as pool:
        result, runtime = submit(fed, pool, rounds=1)
        experiment = awaiting(fed.director)
        from fedloom.federation.transport.proto import fedloom_pb2 as pb
        from fedloom.federation.transport.proto import fedloom_pb2_grpc as rpc

        with runtime._channel() as channel:
            rpc.DirectorStub(channel).Cancel(pb.CancelRequest(experiment=experiment), timeout=30)
        with pytest.raises(Exception, match="cancelled by the user during the review"):
            result.result(timeout=60)
        assert "no experiment awaits review" in fx(fed.folder, "director", "review", "list")
        fed.director.wait_for(rf"experiment {re.escape(experiment)} withdrawn before review")


class FakeDirector:
    """Speaks the director's protocol to a real envoy, to send what a real director never would:
    a package that is not what its digest says, an offer of a package the envoy did not approve."""

    def __init__(self) -> None:
        import queue

        import grpc

        from fedloom.federation.transport.proto import fedloom_pb2 as pb
        from fedloom.federation.transport.proto import fedloom_pb2_grpc as rpc

        self.pb = pb
        self.work: queue.Queue = queue.Queue()
        self.reports: queue.Queue = queue.Queue()
        self.registered: queue.Queue = queue.Queue()
        fake = self

        class Servicer(rpc.DirectorServicer):
            def Register(self, request, context):
                fake.registered.put(request.name)
                return pb.RegisterReply(session="s", health_check_period=5)

            def GetWork(self, request, context):
                while context.is_active():
                    try:
                        yield fake.work.get(timeout=0.5)
                    except queue.Empty:
                        continue

            def SendReport(self, request_iterator, context):
                fake.reports.put(next(request_iterator))
                for _ in request_iterator:
                    pass
                return pb.Ack()

        from types import SimpleNamespace

        from fedloom.federation.transport import bulk

        self.bulk = bulk
        self.packages: dict[str, bytes] = {}  # what Bulk.Pull serves, by experiment

        def pull_state(request, context):
            yield from bulk.pieces(self.packages[request.experiment])

        self.server = grpc.server(ThreadPoolExecutor(8))
        rpc.add_DirectorServicer_to_server(Servicer(), self.server)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            bulk.SERVICE, bulk.method_handlers(SimpleNamespace(
                pull_state=pull_state, push_state=None, push_small_state=None, push_stream=None,
                submit_package=None, final_state=None, recorded_run=None))),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def review(self, experiment: str, digest: str, package: bytes) -> None:
        from fedloom.federation import transport

        for part in transport.chunks(package):
            self.work.put(self.pb.Work(experiment=experiment, review=self.pb.ReviewRequest(
                digest=digest, submitter="alice", collaborators=["site"], package=part)))

    def review_in_bulk(self, experiment: str, digest: str, package: bytes) -> None:
        """The plan announced, its package pulled on Bulk (as for a large initial state)."""
        self.packages[experiment] = package
        self.work.put(self.pb.Work(experiment=experiment, review=self.pb.ReviewRequest(
            digest=digest, submitter="alice", collaborators=["site"],
            package=self.pb.Chunk(total=len(package)), bulk_bytes=len(package))))

    def offer(self, experiment: str, digest: str) -> None:
        self.work.put(self.pb.Work(experiment=experiment, offer=self.pb.Offer(
            digest=digest, collaborators=["site"], run_id="1")))

    def report(self, experiment: str):
        report = self.reports.get(timeout=60)
        assert report.experiment == experiment, report
        return report


def test_an_envoy_runs_only_the_exact_package_it_approved(tmp_path):
    from fedloom.federation.localhost import NodeProcess
    from fedloom.federation.package import package_flow
    from fedloom.federation.transport import wire
    from tests.federation.nodes import FX, PRIVATE_ATTRIBUTES, envoy_config

    fake = FakeDirector()
    (tmp_path / "private_attributes.py").write_text(PRIVATE_ATTRIBUTES)
    (tmp_path / "envoy.yaml").write_text(envoy_config("site", 1.0, review=False))
    envoy = NodeProcess([*FX, "envoy", "start", "-n", "site", "-ec", str(tmp_path / "envoy.yaml"),
                         "-dh", "127.0.0.1", "-dp", str(fake.port), "--disable-tls"], tmp_path,
                        {"PYTHONPATH": str(ROOT)})
    try:
        assert fake.registered.get(timeout=60) == "site"
        approved = package_flow(FedAvgFlow, wire.dumps({"model": np.zeros(3)}))
        other = package_flow(FedAvgFlow, wire.dumps({"model": np.ones(3)}))
        fake.review("e1", approved.digest, approved.to_bytes())
        decision = fake.report("e1").decision
        assert decision.approved and decision.digest == approved.digest
        # Changed in transit: the bytes are not the package the digest names.
        fake.review("e2", approved.digest, other.to_bytes())
        refused = fake.report("e2").decision
        assert not refused.approved and "digest mismatch" in refused.reason
        # An offer of another package than the one approved for e1, and of an unreviewed one.
        fake.offer("e1", other.digest)
        failure = fake.report("e1").failure
        assert f"refuses to run package {other.digest[:12]}" in failure.message
        assert f"it approved package {approved.digest[:12]}" in failure.message
        fake.offer("e3", approved.digest)
        assert "approved no package" in fake.report("e3").failure.message
        # The package it approved, it runs.
        fake.offer("e1", approved.digest)
        assert fake.report("e1").ready == "site"
        # Approved, then other bytes under the same digest (pulled, as a large package is):
        # refused, and not kept to be handed to a collaborator process.
        fake.review_in_bulk("e4", approved.digest, approved.to_bytes())
        assert fake.report("e4").decision.approved
        fake.review_in_bulk("e4", approved.digest, other.to_bytes())
        assert "digest mismatch" in fake.report("e4").decision.reason
        fake.offer("e4", approved.digest)
        assert "refuses to run package" in fake.report("e4").failure.message
    finally:
        envoy.stop()
        fake.server.stop(0)


def test_a_submitter_that_vanishes_while_its_plan_waits_frees_the_reviewers(tmp_path,
                                                                           reviewing_director):
    import json

    from fedloom.federation.localhost import NodeProcess
    from tests.federation.test_federation import USER_SCRIPT

    fed = reviewing_director.ready()
    args = {"hold_on": "", "port": 0, "envoys": list(ENVOYS), "director": fed.director_info()}
    user = NodeProcess([sys.executable, "-c", USER_SCRIPT, json.dumps(args)], tmp_path,
                       {"PYTHONPATH": str(ROOT)})
    experiment = awaiting(fed.director)
    fed.director.wait_for(rf"experiment {re.escape(experiment)}: following it")
    user.process.kill()  # the notebook's kernel died
    user.process.wait(timeout=30)
    fed.director.wait_for(rf"experiment {re.escape(experiment)} withdrawn before review: "
                          r"cancelled: its submitter disconnected")
    assert "no experiment awaits review" in fx(fed.folder, "director", "review", "list")


def test_a_plan_nobody_decides_is_rejected_at_the_review_timeout(tmp_path):
    with ThreadPoolExecutor(1) as pool, \
            federation(tmp_path, ENVOYS, director_review=True, review_timeout=2) as fed:
        result, _runtime = submit(fed, pool)
        experiment = awaiting(fed.director)
        with pytest.raises(ExperimentRejected, match=r"no decision within 2 s") as info:
            result.result(timeout=60)
        assert "no experiment awaits review" in fx(tmp_path, "director", "review", "list")
    decision = info.value.decisions[0]
    assert (decision.participant, decision.verdict, decision.decided_by) == \
        ("director", "rejected", "timeout")
    assert experiment in fx(tmp_path, "director", "review", "log")
