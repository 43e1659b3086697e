"""The serial backend: every collaborator chain runs in this process, one after another."""

from __future__ import annotations

from collections.abc import Sequence

from fedloom.engine import ChainResult, CollaboratorSite, keep_finished_tasks
from fedloom.errors import FlowRunError
from fedloom.participants import Collaborator
from fedloom.state import State, StateCopier, uncopyable
from fedloom.tasks import FlowJob


class SerialBackend:
    """Runs collaborators in turn. Their private attributes are made once, in this process, and
    persist for the life of the runtime (as a long-lived site's would)."""

    name = "single_process"

    def __init__(self, collaborators: Sequence[Collaborator]) -> None:
        self._participants = list(collaborators)
        self._sites: dict[str, CollaboratorSite] = {}
        self._job: FlowJob | None = None

    def open(self, job: FlowJob) -> None:
        if not self._sites:
            self._sites = {c.name: CollaboratorSite(c.name, c.build_private_attributes())
                           for c in self._participants}
        for site in self._sites.values():
            site.start_run()
        self._job = job

    def run_chains(self, step: str, names: Sequence[str], sent: State) -> list[ChainResult]:
        if self._job is None:
            raise RuntimeError("open() must be called before run_chains()")
        # One copy per collaborator: the floor for isolation.
        copier = StateCopier(sent)
        results: list[ChainResult] = []
        try:
            for name in names:
                try:
                    received = copier.copy()
                except Exception as exc:  # e.g. a lock in a public attribute
                    raise uncopyable(sent, step, exc) from exc
                results.append(self._sites[name].run_chain(self._job, step, received))
        except FlowRunError as err:
            keep_finished_tasks(err, results)
            raise
        return results

    def close(self) -> None:
        self._job = None
