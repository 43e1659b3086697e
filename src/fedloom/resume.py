"""Resuming a run that failed or was stopped, from its checkpoint.

A checkpointed run records, for every aggregator task, the public state after the step and the
transition it chose (``fedloom-next`` in the task's metadata). The resume point is the last
aggregator task that completed: a new run starts from its state and goes on where it was going
(e.g. the next round's fan-out). Private attributes are not in any checkpoint: their owners make
them again, as for any run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedloom.errors import FedloomError
from fedloom.spec.graph import FlowGraph
from fedloom.state import State, Transition, transition_from_json
from fedloom.tracking.records import METRICS_ARTIFACT


class ResumeError(FedloomError):
    """The run cannot be resumed (not found, finished, or its state was not fully recorded)."""


@dataclass(frozen=True)
class ResumePoint:
    flow_name: str
    run_id: str
    step: str  # the last aggregator step that completed
    task_id: str
    state: State  # the public state after it
    transition: Transition  # where it was going

    def describe(self) -> str:
        return (f"{self.flow_name}/{self.run_id} after step '{self.step}' (task {self.task_id}),"
                f" going to {self.transition.describe()}")


def find_resume_point(graph: FlowGraph, run_id: str) -> ResumePoint:
    """The resume point of run ``run_id`` of ``graph``'s flow, read with the Metaflow client
    from the local datastore (where local runs, and runs fetched from a director, are)."""
    try:
        from metaflow.client.core import Run, namespace
        from metaflow.exception import MetaflowNotFound
    except ImportError as exc:
        raise ResumeError("resume reads the checkpoint with Metaflow: pip install "
                          f"'fedloom[checkpoint]' ({exc})") from exc
    namespace(None)
    try:
        run = Run(f"{graph.flow_name}/{run_id}")
    except MetaflowNotFound:
        raise ResumeError(f"no recorded run {graph.flow_name}/{run_id} in this Metaflow "
                          "datastore; was it run with checkpoint=True (and, for a federated "
                          "run, fetched here)?") from None
    if run.successful:
        raise ResumeError(f"run {graph.flow_name}/{run_id} finished; there is nothing to resume")
    task = _last_completed_aggregator_task(graph, run)
    if task is None:
        raise ResumeError(f"run {graph.flow_name}/{run_id} has no completed aggregator step "
                          "with a recorded transition; start a new run instead")
    next_json = task.metadata_dict.get("fedloom-next", "")
    return ResumePoint(graph.flow_name, run_id, task.path_components[2], task.id,
                       _state_of(task, graph.flow_name, run_id), transition_from_json(next_json))


def _last_completed_aggregator_task(graph: FlowGraph, run: Any) -> Any:
    best, best_id = None, -1
    for step in run:
        node = graph.steps.get(step.id)
        if node is None or node.role != "aggregator" or step.id == "end":
            continue
        for task in step:
            if int(task.id) > best_id and task.successful and \
                    task.metadata_dict.get("fedloom-next"):
                best, best_id = task, int(task.id)
    return best


def _state_of(task: Any, flow_name: str, run_id: str) -> State:
    # The task's own metrics are the record's, not the flow's state.
    state = {artifact.id: artifact.data for artifact in task.artifacts
             if not artifact.id.startswith("_") and artifact.id != METRICS_ARTIFACT}
    unrecorded = task.metadata_dict.get("fedloom-unpicklable", "")
    if unrecorded:
        raise ResumeError(f"{flow_name}/{run_id}: step '{task.path_components[2]}' could not "
                          f"record {unrecorded} (not picklable), so its state cannot be "
                          "restored; make those attributes picklable or private")
    return state
