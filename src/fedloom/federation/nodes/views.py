"""What users and the director's admin see of experiments: built on the director's loop from
its memory (what runs now: who reviews, what it waits for, the step it is at) and its store
(every experiment ever submitted, also those that ended long ago or before a restart)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fedloom.federation.names import listed
from fedloom.federation.store import ExperimentRecord
from fedloom.federation.transport.proto import fedloom_pb2 as pb

if TYPE_CHECKING:
    from fedloom.federation.nodes.director import Director, Experiment

DIRECTOR = "director"


def experiment_info(director: Director, record: ExperimentRecord, *,
                    admin: bool = False) -> pb.ExperimentInfo:
    """``record`` with what the director knows of it now. A user sees which envoys their
    experiment waits for, never whose experiments keep them busy; the ``admin`` does."""
    info = pb.ExperimentInfo(
        id=record.id, submitter=record.submitter, flow=record.flow_name, digest=record.digest,
        phase=record.state, submitted_at=record.submitted_at,
        started_at=record.started_at or 0.0, ended_at=record.ended_at or 0.0,
        participants=record.participants, reason=record.reason, run_id=record.run_id,
        checkpoint=record.checkpoint)
    live = director.experiments.get(record.id)
    if record.finished or live is None:
        info.detail = record.reason or ("completed" if record.state == "done" else record.state)
        return info
    if live.status == "queued":
        _queued(director, live, info, admin)
    elif live.status == "reviewing":
        order = (DIRECTOR, *live.collaborators)
        info.reviewers.extend(name for name in order if name in live.reviewers)
        info.detail = (f"in review by {', '.join(info.reviewers)}" if info.reviewers
                       else "in review")
    elif live.status == "running":
        if live.step:
            info.step, info.round, info.step_at = live.step, live.round, live.step_at
            info.detail = f"step '{live.step}', round {live.round}"
        else:
            info.detail = "starting the aggregator and collaborator processes"
    return info


def _queued(director: Director, live: Experiment, info: pb.ExperimentInfo,
            admin: bool) -> None:
    missing = [n for n in live.collaborators
               if (link := director.envoys.get(n)) is None or not link.online]
    if missing:
        info.phase = "waiting"
        info.waiting_for.extend(missing)
        since = live.missing_since or time.time()
        info.detail = (f"waiting for envoys {listed(missing)} (offline) since "
                       f"{time.strftime('%H:%M:%S', time.localtime(since))}")
        return
    busy = [n for n in live.collaborators if director.envoys[n].experiment]
    info.detail = f"queued: envoys {', '.join(busy)} are busy" if busy else "queued"
    if admin and busy:
        others = sorted({director.envoys[n].experiment for n in busy})
        info.detail += f" with experiment(s) {', '.join(others)}"
