"""The federation with real processes: a director and envoys on 127.0.0.1, real certificates."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom import FedloomError, StepFailed
from fedloom.runtime.federated import FederatedRuntime
from tests.conftest import SHARED_ENVOYS
from tests.federation.flows import FedAvgFlow
from tests.federation.nodes import envoy_config, federation

pytestmark = pytest.mark.slow

ENVOYS = SHARED_ENVOYS  # the shared federation's, ``fed`` (tests/conftest.py)


def run(fed, **flow_args) -> FedAvgFlow:
    flow = FedAvgFlow(**flow_args)
    flow.runtime = FederatedRuntime(collaborators=list(ENVOYS), director=fed.director_info(),
                                    tls=fed.certs is not None)
    flow.run()
    return flow


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plaintext"])
def test_a_multi_round_flow_runs_across_envoys(request, capsys, tls):
    fed = request.getfixturevalue("shared_tls" if tls else "shared_plaintext").ready()
    start_model = np.array([10.0, 0.0, 0.0])  # a "pre-trained" model passed to the flow
    flow = run(fed, model=start_model, rounds=3)
    np.testing.assert_allclose(flow.model, start_model + 3 * 2.0)  # mean of 1 and 3, x3
    assert flow.round == 3 and flow.seen_by == {"envoy_one": 3.0, "New York": 9.0}
    assert not hasattr(flow, "data") and not hasattr(flow, "secret")
    out = capsys.readouterr().out
    assert "[train @ New York] New York trained round 2" in out
    assert "[start @ aggregator] starting with ['envoy_one', 'New York']" in out
    # two experiments back to back: envoys were freed
    again = run(fed, rounds=1)
    np.testing.assert_allclose(again.model, [2.0, 2.0, 2.0])
    runtime = FederatedRuntime(collaborators=list(ENVOYS), director=fed.director_info(),
                               tls=tls)
    envoys = {e.name: e for e in runtime.get_envoys()}
    assert set(envoys) == set(ENVOYS) and all(e.online for e in envoys.values())


def test_a_step_that_raises_fails_the_experiment_and_the_director_keeps_serving(fed):
    with pytest.raises(StepFailed) as info:
        run(fed, fail_on="New York")
    err = info.value
    assert (err.step, err.participant) == ("train", "New York")
    assert "ValueError: bad data at New York" in err.traceback_text
    flow = run(fed, rounds=1)  # the same envoys serve the next experiment
    np.testing.assert_allclose(flow.model, [2.0, 2.0, 2.0])


def test_an_envoy_that_dies_mid_round_fails_the_experiment(fed):
    with pytest.raises(FedloomError, match="envoy 'New York' disconnected"):
        run(fed, die_on="New York")


def test_an_envoy_with_another_envoys_certificate_is_refused(fed):
    impostor = fed.start_envoy("Oslo", envoy_config("Oslo", 3.0), cert_name="envoy_one")
    try:
        impostor.wait_for(r"refused envoy 'Oslo'")
        assert "presented the certificate of" in "\n".join(impostor.read_all())
        assert impostor.process.returncode == 1  # it stops: retrying cannot help
    finally:
        impostor.stop()
        del fed.envoys["Oslo"]  # never registered: the shared federation is as it was


def test_a_checkpointed_run_is_kept_by_the_director_and_fetched_for_the_user(
        tmp_path, metaflow_client, fed):
    from metaflow import Flow

    flow = run(fed, rounds=2, checkpoint=True)
    with pytest.raises(StepFailed):
        run(fed, fail_on="envoy_one", checkpoint=True)
    kept = fed.folder / ".fedloom" / "director" / "checkpoints" / ".metaflow" / "FedAvgFlow"
    assert (kept / flow._run_id).is_dir()
    record = Flow("FedAvgFlow")[flow._run_id]  # read from the user's own datastore
    assert str(tmp_path / ".metaflow") in record["end"].task["model"]._object["location"]
    assert record.successful
    np.testing.assert_allclose(record.data.model, flow.model)
    trained = list(record["train"])
    assert len(trained) == 4 and {t.data.input for t in trained} == set(ENVOYS)
    assert any("New York trained round 1" in t.stdout for t in trained)
    for step in record:
        for task in step:
            assert "data" not in task and "secret" not in task  # private: never recorded
    failed = Flow("FedAvgFlow").latest_run
    assert failed.id != flow._run_id and not failed.successful
    assert any(not t.successful for t in failed["train"])


@pytest.mark.parametrize("director_tls", [True, False], ids=["tls-director", "plain-director"])
def test_a_client_whose_tls_setting_does_not_match_the_director_is_refused_at_once(
        tmp_path, request, director_tls):
    from fedloom.federation.transport.channels import TransportError
    from tests.federation.nodes import make_certificates

    fed = request.getfixturevalue("shared_tls" if director_tls else "shared_plaintext").ready()
    info = fed.director_info()
    if not director_tls:  # a TLS client with valid certificates of some CA
        certs = make_certificates(tmp_path / "other-pki", [])
        cert, key = certs[("user", "alice")]
        info.update(cert_chain=str(certs[("ca", "")][0]), api_cert=str(cert),
                    api_private_key=str(key))
    runtime = FederatedRuntime(collaborators=["envoy_one"], director=info,
                               tls=not director_tls)
    hint = "requires TLS" if director_tls else "TLS handshake failed"
    with pytest.raises(TransportError, match=hint):
        runtime.get_envoys()
    flow = FedAvgFlow()
    flow.runtime = runtime
    with pytest.raises(TransportError, match=hint):
        flow.run()
    assert "round" not in flow.__dict__  # nothing ran
    matching = FederatedRuntime(collaborators=["envoy_one"], director=fed.director_info(),
                                tls=director_tls)
    assert {e.name for e in matching.get_envoys()} == set(ENVOYS)  # the director serves


NOTEBOOK_CELLS = [
    ("markdown", "# A federated flow written in a notebook"),
    ("code", "import numpy as np\nfrom fedloom import FLSpec, aggregator, collaborator, fedavg\n"
             "from fedloom import FederatedRuntime"),
    ("code", "class Model:\n    '''A notebook-defined class in the flow's initial state.'''\n"
             "    def __init__(self, weights):\n        self.weights = weights\n"),
    ("code", '''class NotebookFlow(FLSpec):
    def __init__(self, model, rounds=2, **kwargs):
        super().__init__(**kwargs)
        self.model, self.rounds = model, rounds

    @aggregator
    def start(self):
        self.names = self.runtime.collaborators
        self.round = 0
        self.next(self.train, foreach="names")

    @collaborator
    def train(self):
        self.model = Model(self.model.weights + self.data)
        print(f"notebook step at {self.input}")
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.model = Model(fedavg([i.model.weights for i in inputs]))
        self.round += 1
        if self.round < self.rounds:
            self.next(self.train, foreach="names")
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        pass
'''),
    ("code", "flow = NotebookFlow(Model(np.array([1.0, 2.0, 3.0])), rounds=2)\n"
             "flow.runtime = FederatedRuntime(collaborators={envoys!r}, director={director!r},\n"
             "                                notebook_path={notebook!r})\n"
             "flow.run()"),
    ("code", "print('RESULT', type(flow.model).__name__, flow.model.weights.tolist())"),
]

# Runs the code cells in order in __main__, as a notebook kernel does: no source file, each
# cell's text kept in linecache under a made-up file name (as IPython does).
KERNEL = ("import linecache, sys, nbformat, __main__\n"
          "cells = nbformat.read(sys.argv[1], as_version=4).cells\n"
          "for n, cell in enumerate(c for c in cells if c.cell_type == 'code'):\n"
          "    name = f'/tmp/ipykernel_0/cell{n}.py'\n"
          "    lines = cell.source.splitlines(True)\n"
          "    linecache.cache[name] = (len(cell.source), None, lines, name)\n"
          "    exec(compile(cell.source, name, 'exec'), __main__.__dict__)\n")


def test_a_flow_written_in_a_notebook_runs_across_envoys(tmp_path, fed):
    import subprocess
    import sys

    import nbformat

    notebook = tmp_path / "experiment.ipynb"
    fill = {"envoys": list(ENVOYS), "director": fed.director_info(),
            "notebook": str(notebook)}
    cells = [nbformat.v4.new_code_cell(text.format(**fill) if "{envoys" in text else text)
             if kind == "code" else nbformat.v4.new_markdown_cell(text)
             for kind, text in NOTEBOOK_CELLS]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), notebook)
    done = subprocess.run([sys.executable, "-c", KERNEL, str(notebook)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[train @ New York] notebook step at New York" in done.stdout
    # start (1,2,3) + mean(1, 3) = 2 per round, two rounds; the class survived both ways
    assert "RESULT Model [5.0, 6.0, 7.0]" in done.stdout


# A user's script: runs FedAvgFlow, holding one collaborator inside its step (see flows.py).
USER_SCRIPT = """
import json, sys
from fedloom import FederatedRuntime
from tests.federation.flows import FedAvgFlow
args = json.loads(sys.argv[1])
flow = FedAvgFlow(hold_on=args["hold_on"], hold_port=args["port"])
flow.runtime = FederatedRuntime(collaborators=args["envoys"], director=args["director"])
try:
    flow.run()
except KeyboardInterrupt:
    print("CANCELLED", flush=True)
    sys.exit(3)
"""


def test_ctrl_c_cancels_the_experiment_everywhere_and_frees_the_envoys(tmp_path, fed):
    import json
    import signal
    import socket
    import sys

    from tests.federation.nodes import ROOT, Node

    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(60)
        args = {"hold_on": "New York", "port": server.getsockname()[1],
                "envoys": list(ENVOYS), "director": fed.director_info()}
        user = Node([sys.executable, "-c", USER_SCRIPT, json.dumps(args)], tmp_path,
                    {"PYTHONPATH": str(ROOT)})
        held, _ = server.accept()  # New York's collaborator is inside its step now
        with held:
            held.settimeout(60)
            user.process.send_signal(signal.SIGINT)
            user.wait_for(r"experiment \S+: cancelling it everywhere \(Ctrl-C again")
            user.wait_for("CANCELLED")
            assert user.process.wait(timeout=30) == 3
            assert held.recv(1) == b""  # its envoy stopped the collaborator mid-step
        fed.director.wait_for(r"experiment \S+ cancelled by the user")
        flow = run(fed, rounds=1)  # the envoys serve the next experiment
        np.testing.assert_allclose(flow.model, [2.0, 2.0, 2.0])


def test_envoys_reconnect_by_themselves_to_a_restarted_director(fed):
    from tests.federation.nodes import FX, Node

    fed.director.process.kill()  # a crash: no goodbye to the envoys
    fed.director.process.wait(timeout=30)
    config = fed.folder / "director.yaml"
    config.write_text(config.read_text().replace("listen_port: 0",
                                                 f"listen_port: {fed.port}"))
    fed.director = Node([*FX, "director", "start", "-c", str(config),
                         *fed.tls_args("director", "director")], fed.folder, fed.env)
    fed.director.wait_for(rf"director listening on [^:]+:{fed.port}")
    for name in ENVOYS:
        fed.director.wait_for(rf"envoy '{name}' registered")
    flow = run(fed, rounds=2)
    np.testing.assert_allclose(flow.model, [4.0, 4.0, 4.0])


def test_state_larger_than_any_grpc_message_crosses_in_chunks(fed):
    big = np.arange(5_100_000, dtype=np.float64).reshape(-1, 3)  # 41 MB: 10x gRPC's limit
    flow = run(fed, model=big, rounds=1)
    np.testing.assert_allclose(flow.model, big + 2.0)


def test_an_envoy_that_hangs_mid_round_is_found_by_the_health_check(tmp_path):
    import signal
    import socket
    from concurrent.futures import ThreadPoolExecutor

    # A short period, so the test waits three of them, not fifteen seconds; New York alone,
    # so no other envoy starved by a busy machine for three periods can be "lost" first.
    with ThreadPoolExecutor(1) as pool, socket.create_server(("127.0.0.1", 0)) as server, \
            federation(tmp_path, {"New York": 3.0}, health_check_period=1) as fed:
        server.settimeout(60)
        flow = FedAvgFlow(hold_on="New York", hold_port=server.getsockname()[1])
        flow.runtime = FederatedRuntime(collaborators=["New York"],
                                        director=fed.director_info())
        result = pool.submit(flow.run)
        held, _ = server.accept()  # New York's collaborator is inside its step
        with held:
            envoy = fed.envoys["New York"].process
            envoy.send_signal(signal.SIGSTOP)  # alive, connected, and silent
            try:
                with pytest.raises(FedloomError, match=r"envoy 'New York' missed its health "
                                                       r"checks \(silent for \d+ s"):
                    result.result(timeout=60)
            finally:
                envoy.send_signal(signal.SIGCONT)


# How long the aggregator waits for a fan-out's results: New York never sends its own, so every
# round lasts this long. envoy_one's must come in time on a busy machine, where a round trip
# through the director, an envoy and its collaborator process has taken seconds.
STRAGGLER_DEADLINE = 8.0


def test_with_a_straggler_policy_a_slow_envoy_and_a_killed_one_are_dropped(tmp_path):
    import socket

    from fedloom import StragglerPolicy

    envoys = {**ENVOYS, "Oslo": 5.0}
    with socket.create_server(("127.0.0.1", 0)) as server, \
            federation(tmp_path, envoys) as fed:
        flow = FedAvgFlow(rounds=2, hold_on="New York", hold_port=server.getsockname()[1],
                          die_on="Oslo")
        flow.runtime = FederatedRuntime(
            collaborators=list(envoys), director=fed.director_info(),
            straggler_policy=StragglerPolicy(deadline=STRAGGLER_DEADLINE))
        flow.run()  # New York never finishes its step; Oslo's envoy dies in it
    np.testing.assert_allclose(flow.model, [2.0, 2.0, 2.0])  # envoy_one's data, two rounds
    assert flow.seen_by == {"envoy_one": 3.0}
    assert "timed out" in flow.dropped["New York"]
    assert flow.dropped["Oslo"] == "envoy disconnected"


def test_a_failed_federated_run_resumes_from_its_fetched_checkpoint(tmp_path, metaflow_client,
                                                                   fed):
    from metaflow import Flow

    flag = tmp_path / "disk-is-full"
    uninterrupted = run(fed, rounds=3)
    flag.touch()
    failed = FedAvgFlow(rounds=3, flaky_while=str(flag), checkpoint=True)
    failed.runtime = FederatedRuntime(collaborators=list(ENVOYS),
                                      director=fed.director_info())
    with pytest.raises(StepFailed, match="disk full"):
        failed.run()
    flag.unlink()  # the site fixed its disk
    resumed = FedAvgFlow(checkpoint=True)
    resumed.runtime = failed.runtime
    resumed.run(resume=failed._run_id)  # from the record fetched at the failure
    np.testing.assert_allclose(resumed.model, uninterrupted.model)
    assert resumed.round == 3 and resumed.rounds == 3  # the recorded state, not the new object's
    record = Flow("FedAvgFlow")[resumed._run_id]
    assert record.successful and f"fedloom-resumed-from:{failed._run_id}" in record.tags
    assert "start" not in {step.id for step in record}


def test_an_envoy_that_was_lost_and_came_back_rejoins_the_running_experiment(fed):
    import socket
    from concurrent.futures import ThreadPoolExecutor

    from fedloom import StragglerPolicy
    from tests.federation.nodes import envoy_config

    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(60)
        # New York's envoy dies in round 0; envoy_one holds round 1 until New York is back.
        flow = FedAvgFlow(rounds=3, die_on="New York", die_round=0, hold_on="envoy_one",
                          hold_round=1, hold_port=server.getsockname()[1])
        flow.runtime = FederatedRuntime(collaborators=list(ENVOYS), director=fed.director_info(),
                                        straggler_policy=StragglerPolicy(min_collaborators=1))
        with ThreadPoolExecutor(1) as pool:
            result = pool.submit(flow.run)
            held, _ = server.accept()  # round 1 is under way, without New York
            with held:
                fed.start_envoy("New York", envoy_config("New York", 3.0))
                fed.director.wait_for(r"envoy 'New York' rejoined experiment")
            result.result(timeout=120)
    # Round 0 and 1: envoy_one alone (+1 each); round 2: both again (mean of +1 and +3).
    np.testing.assert_allclose(flow.model, [4.0, 4.0, 4.0])
    assert flow.seen_by == {"envoy_one": 3.0, "New York": 9.0} and flow.dropped == {}


def test_a_collaborator_process_that_dies_fails_the_run_or_is_dropped_never_hangs(fed):
    from fedloom import StragglerPolicy

    with pytest.raises(FedloomError, match=r"collaborator process of envoy 'New York' "
                                           r"exited unexpectedly \(killed by SIGKILL; what "
                                           r"it printed last is in this envoy's log\)"):
        run(fed, crash_on="New York", rounds=1)
    flow = FedAvgFlow(rounds=2, crash_on="New York")
    flow.runtime = FederatedRuntime(collaborators=list(ENVOYS), director=fed.director_info(),
                                    straggler_policy=StragglerPolicy(min_collaborators=1))
    flow.run()
    fed.envoys["New York"].wait_for(r"exited unexpectedly")
    assert fed.envoys["New York"].process.poll() is None  # the envoy itself lives on
    np.testing.assert_allclose(flow.model, [2.0, 2.0, 2.0])
    assert "exited unexpectedly" in flow.dropped["New York"]


def test_an_aggregator_that_cannot_set_up_fails_the_run_and_frees_the_envoys(tmp_path):
    import os

    from fedloom.federation.localhost import local_federation
    from tests.federation.nodes import PRIVATE_ATTRIBUTES, ROOT

    broken = PRIVATE_ATTRIBUTES + (
        "\ndef missing_data():\n    raise FileNotFoundError('aggregator data not found')\n")
    director = ("settings:\n  listen_host: 127.0.0.1\n  listen_port: 0\n"
                "  review_experiment: false\n"
                "aggregator:\n  callable_func:\n    template: private_attributes.missing_data\n")
    env = {"PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with local_federation(tmp_path, {n: envoy_config(n, v) for n, v in ENVOYS.items()},
                          director, files={"private_attributes.py": broken}, env=env) as fed:
        for _ in range(2):  # the second one runs too: the envoys were freed
            with pytest.raises(FedloomError, match="aggregator data not found"):
                run(fed)
