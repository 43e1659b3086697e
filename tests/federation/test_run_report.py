"""`fx run show` on a federated run fetched from the director: the run's own times and graph."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from fedloom.cli import main
from fedloom.runtime.federated import FederatedRuntime
from tests.conftest import SHARED_ENVOYS
from tests.federation.flows import FedAvgFlow

pytestmark = pytest.mark.slow


def test_fx_run_show_of_a_fetched_run_has_its_task_times_and_graph(tmp_path, metaflow_client,
                                                                   shared_plaintext):
    from metaflow import Task

    from fedloom.checkpoint.report import report_from_metaflow

    fed = shared_plaintext.ready()
    flow = FedAvgFlow(rounds=1, checkpoint=True)
    flow.runtime = FederatedRuntime(collaborators=list(SHARED_ENVOYS),
                                    director=fed.director_info(), tls=False)
    flow.run()
    # The record was written on the director at the end of the run; the report's times are
    # those the tasks ran at (recorded where they ran), not when the record was written.
    report = report_from_metaflow("FedAvgFlow", flow._run_id)
    assert [t.step for t in report.tasks].count("train") == 2
    for row in report.tasks:
        meta = Task(f"FedAvgFlow/{flow._run_id}/{row.step}/{row.task_id}").metadata_dict
        assert (row.started_at, row.finished_at) == (float(meta["started-at"]),
                                                     float(meta["finished-at"]))
    assert "flowchart TD" in report.graph_mermaid and "FedAvgFlow" in report.graph_text
    page = tmp_path / "copy.html"
    shown = CliRunner().invoke(main, ["run", "show", f"FedAvgFlow/{flow._run_id}",
                                      "--html", str(page)])
    assert shown.exit_code == 0, shown.output
    assert "<h2>Flow</h2>" in page.read_text()
