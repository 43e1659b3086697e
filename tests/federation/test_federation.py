"""The federation with real processes: a director and envoys on 127.0.0.1, real certificates."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom import FedloomError, StepFailed
from fedloom.runtime.federated import FederatedRuntime
from tests.federation.flows import FedAvgFlow
from tests.federation.nodes import federation

pytestmark = pytest.mark.slow

ENVOYS = {"envoy_one": 1.0, "New York": 3.0}


def run(fed, **flow_args) -> FedAvgFlow:
    flow = FedAvgFlow(**flow_args)
    flow.runtime = FederatedRuntime(collaborators=list(ENVOYS), director=fed.director_info(),
                                    tls=fed.certs is not None)
    flow.run()
    return flow


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plaintext"])
def test_a_multi_round_flow_runs_across_envoys(tmp_path, capsys, tls):
    with federation(tmp_path, ENVOYS, tls=tls) as fed:
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


def test_a_step_that_raises_fails_the_experiment_and_the_director_keeps_serving(tmp_path):
    with federation(tmp_path, ENVOYS) as fed:
        with pytest.raises(StepFailed) as info:
            run(fed, fail_on="New York")
        err = info.value
        assert (err.step, err.participant) == ("train", "New York")
        assert "ValueError: bad data at New York" in err.traceback_text
        flow = run(fed, rounds=1)  # the same envoys serve the next experiment
        np.testing.assert_allclose(flow.model, [2.0, 2.0, 2.0])


def test_an_envoy_that_dies_mid_round_fails_the_experiment(tmp_path):
    with federation(tmp_path, ENVOYS) as fed, \
            pytest.raises(FedloomError, match="envoy 'New York' disconnected"):
        run(fed, die_on="New York")


def test_an_envoy_with_another_envoys_certificate_is_refused(tmp_path):
    with federation(tmp_path, {"envoy_one": 1.0}) as fed:
        impostor = fed.start_envoy("New York", 3.0, cert_name="envoy_one")
        impostor.wait_for(r"refused envoy 'New York'")
        assert impostor.process.wait(timeout=30) == 1  # it stops: retrying cannot help
        assert "presented the certificate of" in "\n".join(impostor.seen + [
            line for line in iter(lambda: impostor.lines.get(timeout=5), None)])


def test_a_checkpointed_run_is_kept_by_the_director_and_fetched_for_the_user(
        tmp_path, metaflow_client):
    from metaflow import Flow

    with federation(tmp_path, ENVOYS) as fed:
        flow = run(fed, rounds=2, checkpoint=True)
        with pytest.raises(StepFailed):
            run(fed, fail_on="envoy_one", checkpoint=True)
    kept = tmp_path / ".fedloom" / "director" / "checkpoints" / ".metaflow" / "FedAvgFlow"
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
        tmp_path, director_tls):
    from fedloom.federation.transport import TransportError
    from tests.federation.nodes import _make_certificates

    with federation(tmp_path, {"envoy_one": 1.0}, tls=director_tls) as fed:
        info = fed.director_info()
        if not director_tls:  # a TLS client with valid certificates of some CA
            certs = _make_certificates(tmp_path / "other-pki", [])
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
        assert [e.name for e in matching.get_envoys()] == ["envoy_one"]  # the director serves
