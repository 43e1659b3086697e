"""The Ray backend: placement, resources, output, failures, clusters."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fedloom import (
    Aggregator,
    Collaborator,
    FlowRunError,
    FLSpec,
    LocalRuntime,
    ParticipantError,
    aggregator,
    collaborator,
    fedavg,
)
from fedloom.runtime.local.ray_placement import (
    ActorPlan,
    NodeResources,
    check_fits,
    plan_actors,
)
from tests.conftest import make_runtime

pytest.importorskip("ray")

ONE_NODE_2_GPUS = [NodeResources("node-a", cpus=2, gpus=2)]


def collaborators(count: int, **resources: float) -> list[Collaborator]:
    return [Collaborator(name=f"c{i}", **resources) for i in range(count)]


# -- placement rules (no Ray needed) -----------------------------------------------------------

def test_spec_example_five_participants_at_point_four_gpu_do_not_fit_two_gpus():
    plans = plan_actors(collaborators(4, num_gpus=0.4), None, cluster_cpus=2)
    with pytest.raises(ParticipantError) as info:
        check_fits(plans, Aggregator(num_gpus=0.4), ONE_NODE_2_GPUS)
    message = str(info.value)
    assert "2 GPUs in total" in message and "0 CPUs" in message
    assert "node node-a: 2 CPUs, 2 GPUs" in message
    assert "a fraction of a GPU must fit inside one GPU" in message


def test_spec_example_five_participants_at_point_two_gpu_share_one_gpu():
    plans = plan_actors(collaborators(4, num_gpus=0.2), None, cluster_cpus=2)
    check_fits(plans, Aggregator(num_gpus=0.2), [NodeResources("n", cpus=2, gpus=1)])
    assert [p.num_gpus for p in plans] == [0.2] * 4


def test_requests_beyond_the_cluster_are_refused():
    with pytest.raises(ParticipantError, match="num_cpus=3"):
        check_fits(plan_actors(collaborators(1, num_cpus=3), None, 2), Aggregator(),
                   ONE_NODE_2_GPUS)
    with pytest.raises(ParticipantError, match=r"not e\.g\. 1\.5"):
        check_fits(plan_actors(collaborators(1, num_gpus=1.5), None, 2), Aggregator(),
                   ONE_NODE_2_GPUS)
    with pytest.raises(ParticipantError, match="num_gpus=1"):
        check_fits(plan_actors(collaborators(3, num_gpus=1), None, 2), Aggregator(),
                   ONE_NODE_2_GPUS)


def test_actor_grouping():
    plans = plan_actors(collaborators(10), num_actors=3, cluster_cpus=8)
    assert [len(p.members) for p in plans] == [4, 4, 2]
    assert [m for p in plans for m in p.members] == [f"c{i}" for i in range(10)]
    # nothing asked: one actor per CPU, reserving no CPU (Ray's default for running actors)
    assert plan_actors(collaborators(1000), None, cluster_cpus=2) == [
        ActorPlan(tuple(f"c{i}" for i in range(s, s + 500)), 0.0, 0.0) for s in (0, 500)]
    # asking for resources: one actor each, so each gets exactly what it asked
    mixed = [Collaborator(name="a", num_gpus=0.5), Collaborator(name="b")]
    assert [p.members for p in plan_actors(mixed, None, 2)] == [("a",), ("b",)]


def test_num_actors_groups_only_collaborators_that_ask_for_nothing():
    mixed = [Collaborator(name="gpu", num_gpus=0.5), Collaborator(name="x"),
             Collaborator(name="cpu", num_cpus=1), Collaborator(name="y"), Collaborator(name="z")]
    assert plan_actors(mixed, num_actors=1, cluster_cpus=4) == [
        ActorPlan(("gpu",), 0.0, 0.5), ActorPlan(("cpu",), 1.0, 0.0),
        ActorPlan(("x", "y", "z"), 0.0, 0.0)]
    # by default, one actor per CPU that the collaborators asking for CPUs left over
    assert [p.members for p in plan_actors(mixed, None, cluster_cpus=3)][2:] == [
        ("x", "y"), ("z",)]
    with pytest.raises(ParticipantError, match="num_actors"):
        plan_actors(collaborators(2), num_actors=0, cluster_cpus=2)


# -- real Ray ----------------------------------------------------------------------------------

class WhereAmI(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.report, foreach="collaborators")

    @collaborator
    def report(self):
        import ray

        self.pid = os.getpid()
        self.private_made_in = self.made_in_pid
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        self.cuda_visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        print(f"hello from {self.input}")
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.report = {i.input: (i.pid, i.private_made_in, i.gpu_ids, i.cuda_visible)
                       for i in inputs}
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def made_in_pid(index: int) -> dict[str, int]:
    return {"made_in_pid": os.getpid()}


def test_private_attributes_are_made_in_the_actor_and_gpus_are_assigned(ray_cluster, capsys):
    names = [f"site{i}" for i in range(4)]
    runtime = LocalRuntime(aggregator=Aggregator(), backend="ray", collaborators=[
        Collaborator(name=n, num_gpus=0.5, private_attributes_callable=made_in_pid, index=i)
        for i, n in enumerate(names)])
    flow = WhereAmI()
    flow.runtime = runtime
    flow.run()
    runtime.shutdown()
    report = flow.report
    assert all(pid == made != os.getpid() for pid, made, _, _ in report.values())
    gpus = [g for *_, ids, _ in report.values() for g in ids]
    assert all(len(ids) == 1 for *_, ids, _ in report.values())  # one (fake) GPU each
    assert sorted(gpus.count(g) for g in set(gpus)) == [2, 2]  # 0.5 + 0.5 per GPU
    assert all(visible == ids[0] for *_, ids, visible in report.values())
    out = capsys.readouterr().out
    for name in names:  # each task's output reaches the console once, attributed
        assert out.count(f"[report @ {name}] hello from {name}\n") == 1
    assert ray_cluster.is_initialized()  # we did not start this Ray, so we left it running


def test_collaborators_share_actors(ray_cluster):
    runtime = make_runtime([f"c{i}" for i in range(6)], backend="ray", num_actors=2,
                           collab_private=made_in_pid_by_name)
    flow = WhereAmI()
    flow.runtime = runtime
    flow.run()
    runtime.shutdown()
    pids = {pid for pid, *_ in flow.report.values()}
    assert len(pids) == 2


def made_in_pid_by_name(index: int, name: str) -> dict[str, int]:
    return made_in_pid(index)


def test_collaborators_asking_for_resources_get_their_own_actor_whatever_num_actors(
        ray_cluster):
    names = ["gpu0", "gpu1", "c0", "c1", "c2"]
    runtime = LocalRuntime(backend="ray", num_actors=1, collaborators=[
        Collaborator(name=n, num_gpus=0.5 if n.startswith("gpu") else 0,
                     private_attributes_callable=made_in_pid, index=i)
        for i, n in enumerate(names)])
    flow = WhereAmI()
    flow.runtime = runtime
    try:
        flow.run()
    finally:
        runtime.shutdown()
    pid = {name: report[0] for name, report in flow.report.items()}
    assert pid["c0"] == pid["c1"] == pid["c2"]  # num_actors=1: those that ask for nothing share
    assert len({pid["gpu0"], pid["gpu1"], pid["c0"]}) == 3  # the others each have their own
    for name in ("gpu0", "gpu1"):
        _, _, gpu_ids, _ = flow.report[name]
        assert len(gpu_ids) == 1  # exactly what it asked for: a share of one (fake) GPU
    assert flow.report["c0"][2] == []  # and nobody else holds a GPU


def test_impossible_request_is_refused_before_anything_runs(ray_cluster):
    ran = []

    class Marks(WhereAmI):
        @aggregator
        def start(self):
            ran.append("start")
            self.collaborators = self.runtime.collaborators
            self.next(self.report, foreach="collaborators")

    runtime = LocalRuntime(backend="ray", collaborators=collaborators(3, num_gpus=1))
    flow = Marks()
    flow.runtime = runtime
    with pytest.raises(ParticipantError, match="cannot hold"):
        flow.run()
    assert ran == []


class Dies(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.work, foreach="collaborators")

    @collaborator
    def work(self):
        if self.input == "c1":
            os._exit(3)  # the worker process dies, as with an out-of-memory kill
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_a_dying_worker_is_reported_not_waited_for(ray_cluster):
    runtime = make_runtime(["c0", "c1", "c2"], backend="ray", num_actors=3)
    flow = Dies()
    flow.runtime = runtime
    with pytest.raises(FlowRunError, match=r"hosting collaborator\(s\) \['c1'\] died") as info:
        flow.run()
    assert info.value.participant == "c1"
    runtime.shutdown()


class Seeded(FLSpec):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.weights = np.zeros(8)

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.round = 0
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        noise = self.rng.normal(size=self.weights.shape)
        self.weights = self.weights - 0.1 * (self.weights - self.target) + 0.01 * noise
        self.n = int(self.rng.integers(10, 100))
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.weights = fedavg([i.weights for i in inputs], weights=[i.n for i in inputs])
        self.round += 1
        if self.round < 4:
            self.next(self.train, foreach="collaborators")
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        pass


def seeded_data(index: int, name: str) -> dict[str, object]:
    return {"rng": np.random.default_rng(index), "target": np.full(8, float(index))}


def test_same_seeds_give_the_same_numbers_on_both_backends(ray_cluster):
    results = []
    for backend in ("single_process", "ray"):
        flow = Seeded()
        flow.runtime = make_runtime([f"c{i}" for i in range(5)], backend=backend,
                                    collab_private=seeded_data)
        flow.run()
        flow.runtime.shutdown()
        results.append(flow.weights)
    np.testing.assert_array_equal(results[0], results[1])


MULTI_NODE = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    import ray
    from ray.cluster_utils import Cluster
    from fedloom import LocalRuntime, Collaborator
    from tests.test_ray import WhereAmI, made_in_pid

    cluster = Cluster(initialize_head=True,
                      head_node_args={{"num_cpus": 1, "include_dashboard": False}})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    runtime = LocalRuntime(backend="ray", address=cluster.address, collaborators=[
        Collaborator(name=f"c{{i}}", num_cpus=1, private_attributes_callable=made_in_pid,
                     index=i) for i in range(2)])
    flow = WhereAmI()
    flow.runtime = runtime
    flow.run()
    nodes = {{p["node_id"] for p in runtime._backend.placement.values()}}
    print("NODES", len(nodes))
    runtime.shutdown()
    print("CONNECTED_AFTER_SHUTDOWN", ray.is_initialized())
    cluster.shutdown()
""")


@pytest.mark.slow
def test_runs_across_a_real_two_node_cluster(tmp_path: Path):
    root = str(Path(__file__).resolve().parents[1])
    script = tmp_path / "multi_node.py"
    script.write_text(MULTI_NODE.format(root=root))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=240, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "NODES 2" in done.stdout  # one collaborator on each node
    assert "CONNECTED_AFTER_SHUTDOWN False" in done.stdout  # we connected, so we disconnect


def test_what_workers_cannot_import_is_a_clear_error(ray_cluster, tmp_path, monkeypatch):
    (tmp_path / "only_on_the_driver.py").write_text(
        "def make_data():\n    return {'x': 1}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import only_on_the_driver  # the driver can import it; the Ray workers cannot

    runtime = LocalRuntime(backend="ray", collaborators=[
        Collaborator(name="c0", private_attributes_callable=only_on_the_driver.make_data)])
    flow = WhereAmI()
    flow.runtime = runtime
    with pytest.raises(FlowRunError, match="Ray workers could not load what the collaborators "
                                           "need") as info:
        flow.run()
    assert "only_on_the_driver" in str(info.value)
