"""Metrics across a real federation: logged on the envoys and the aggregator, delivered to the
submitter as they arrive, on flow.metrics after run(), and in the record it fetches."""

from __future__ import annotations

import json
import logging

import pytest
from click.testing import CliRunner

from fedloom.cli import main
from fedloom.runtime.federated import FederatedRuntime
from fedloom.tracking import MetricRecord, Metrics
from tests.federation.tracking_flows import TrackedFlow, expected, logged

pytestmark = pytest.mark.slow

ENVOYS = {"envoy_one": 1.0, "New York": 3.0}  # the shared federation's (see tests/conftest.py)


def test_every_site_s_metrics_reach_the_submitter_live_and_the_record(fed, metaflow_client,
                                                                      caplog):
    from metaflow import Flow

    caplog.set_level(logging.INFO, logger="fedloom.runtime.federated")
    flow = TrackedFlow(rounds=2, checkpoint=True)
    flow.runtime = FederatedRuntime(collaborators=list(ENVOYS), director=fed.director_info())
    flow.run()
    want = expected(ENVOYS, 2)
    assert logged(flow.metrics) == want and len(flow.metrics) == len(want)
    assert {m.run_id for m in flow.metrics} == {flow._run_id}
    assert flow.metrics.params == {"rounds": 2, "lr": 0.5, "tag": "tracked"}
    # Live: round 1's values were shown before round 2 was sent out, not only at the end.
    lines = [r.getMessage() for r in caplog.records if r.name == "fedloom.runtime.federated"]
    first_values = next(i for i, line in enumerate(lines)
                        if "loss: mean 6 · envoy_one 3, New York 9" in line)
    second_round = next(i for i, line in enumerate(lines) if ": round 2/2, step 'train'" in line)
    assert first_values < second_round, lines
    # The record the director kept and run() fetched, through the Metaflow client and fx.
    run = Flow("TrackedFlow").latest_run
    assert run.id == flow._run_id
    recorded = [MetricRecord.from_dict(row) for step in run for task in step
                for row in task.data.fedloom_metrics]
    assert logged(recorded) == want
    result = CliRunner().invoke(main, ["run", "metrics", f"TrackedFlow/{run.id}", "--json"])
    assert result.exit_code == 0, result.output
    assert logged(Metrics.from_dicts(json.loads(result.output)["metrics"])) == want
