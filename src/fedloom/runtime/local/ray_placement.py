"""Which collaborators share a Ray actor, and whether the actors fit the cluster at all.

Ray keeps an actor whose resources can never be met pending forever; fedloom refuses such a
request before the run instead, saying what was asked and what exists.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fedloom.errors import ParticipantError
from fedloom.participants import Collaborator, Participant


@dataclass(frozen=True)
class ActorPlan:
    """One actor: the collaborators it hosts and what it asks Ray for."""

    members: tuple[str, ...]
    num_cpus: float
    num_gpus: float


@dataclass(frozen=True)
class NodeResources:
    node_id: str
    cpus: float
    gpus: int


def plan_actors(collaborators: Sequence[Collaborator], num_actors: int | None,
                cluster_cpus: float) -> list[ActorPlan]:
    """Split collaborators into actors. A collaborator that asks for resources (``num_cpus``,
    ``num_gpus``) always gets an actor of its own with exactly that: grouped with others, it
    would share them, or hold them while the others run. ``num_actors`` groups only those that
    ask for nothing; by default one actor per CPU the others did not reserve."""
    if num_actors is not None and (isinstance(num_actors, bool) or
                                   not isinstance(num_actors, int) or num_actors < 1):
        raise ParticipantError(f"num_actors must be a whole number >= 1, got {num_actors!r}")
    asking = [c for c in collaborators if c.num_cpus or c.num_gpus]
    plans = [ActorPlan((c.name,), c.num_cpus, c.num_gpus) for c in asking]
    rest = [c for c in collaborators if not (c.num_cpus or c.num_gpus)]
    if not rest:
        return plans
    if num_actors is None:
        num_actors = max(1, int(cluster_cpus - sum(c.num_cpus for c in asking)))
    size = math.ceil(len(rest) / min(num_actors, len(rest)))
    # Nothing asked means 0 CPUs reserved (Ray's own default for a running actor).
    plans.extend(ActorPlan(tuple(c.name for c in rest[start:start + size]), 0.0, 0.0)
                 for start in range(0, len(rest), size))
    return plans


def check_fits(plans: Sequence[ActorPlan], aggregator: Participant,
               nodes: Sequence[NodeResources]) -> None:
    """Refuse, before anything starts, actor requests that no node of the cluster can hold."""
    for plan in plans:
        _check_gpu_shape(plan)
    asked = [(", ".join(p.members), p.num_cpus, p.num_gpus) for p in plans]
    if aggregator.num_cpus or aggregator.num_gpus:
        asked.append((f"aggregator {aggregator.name}", aggregator.num_cpus, aggregator.num_gpus))
    free_cpus = {n.node_id: n.cpus for n in nodes}
    free_gpus = {n.node_id: [1.0] * n.gpus for n in nodes}
    # Largest first (first-fit decreasing): a fraction of a GPU must fit inside one GPU.
    for who, cpus, gpus in sorted(asked, key=lambda a: (a[2], a[1]), reverse=True):
        node = _place(cpus, gpus, free_cpus, free_gpus)
        if node is None:
            raise ParticipantError(_not_enough(who, cpus, gpus, asked, nodes))


def _check_gpu_shape(plan: ActorPlan) -> None:
    if plan.num_gpus > 1 and plan.num_gpus != int(plan.num_gpus):
        raise ParticipantError(
            f"collaborator(s) {', '.join(plan.members)} ask for num_gpus={plan.num_gpus}: a "
            "participant can use a fraction of one GPU or whole GPUs, not e.g. 1.5")


def _place(cpus: float, gpus: float, free_cpus: dict[str, float],
           free_gpus: dict[str, list[float]]) -> str | None:
    for node, cpu_left in free_cpus.items():
        if cpu_left + 1e-9 < cpus:
            continue
        slots = free_gpus[node]
        chosen = _gpu_slots(slots, gpus)
        if chosen is None:
            continue
        for i in chosen:
            slots[i] -= min(gpus, 1.0)
        free_cpus[node] = cpu_left - cpus
        return node
    return None


def _gpu_slots(slots: list[float], gpus: float) -> list[int] | None:
    if gpus <= 0:
        return []
    if gpus < 1:
        fit = next((i for i, left in enumerate(slots) if left + 1e-9 >= gpus), None)
        return None if fit is None else [fit]
    whole = [i for i, left in enumerate(slots) if left >= 1 - 1e-9]
    return whole[:int(gpus)] if len(whole) >= gpus else None


def _not_enough(who: str, cpus: float, gpus: float, asked: list[tuple[str, float, float]],
                nodes: Sequence[NodeResources]) -> str:
    total_cpus = sum(a[1] for a in asked)
    total_gpus = sum(a[2] for a in asked)
    have = "; ".join(f"node {n.node_id[:8]}: {n.cpus:g} CPUs, {n.gpus} GPUs" for n in nodes)
    return (f"the Ray cluster cannot hold {who} (num_cpus={cpus:g}, num_gpus={gpus:g}) next to "
            f"the others: all participants ask for {total_cpus:g} CPUs and {total_gpus:g} GPUs "
            f"in total, a fraction of a GPU must fit inside one GPU, and the cluster has "
            f"{have or 'no nodes'}. Lower num_cpus/num_gpus, share actors with num_actors=, or "
            "add nodes.")
