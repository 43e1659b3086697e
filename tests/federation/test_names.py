"""A thousand participants read as a few names and a count, and their review's status changes
at most once a second while many are left (the latest always told)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from fedloom.federation.names import listed
from fedloom.federation.nodes.director import Experiment
from fedloom.federation.review import phase
from fedloom.federation.review.phase import ReviewPhase


def test_listed_shows_a_few_names_and_how_many_more():
    assert listed(["a", "b"]) == "a, b"
    assert listed([f"e{i}" for i in range(5)]) == "e0, e1, e2, e3, e4"
    assert listed([f"e{i}" for i in range(1000)]) == "e0, e1, e2, e3, e4 and 995 more"
    assert listed([f"e{i}" for i in range(30)], 20).endswith("e19 and 10 more")


def _statuses(experiment: Experiment) -> list[str]:
    return [e.status for e in experiment.events.so_far() if e.HasField("status")]


def test_many_reviewers_deciding_make_few_statuses_and_the_latest_is_told(monkeypatch):
    monkeypatch.setattr(phase, "STATUS_EVERY", 0.2)
    names = tuple(f"site_{i:03d}" for i in range(200))

    async def decide_all_but_ten() -> Experiment:
        experiment = Experiment("1-x", "alice", names, "d" * 64, b"", False, "Flow", 60.0)
        director = SimpleNamespace(desk=None, send=None, outbox=None)
        review = ReviewPhase(director, experiment)
        waiting = set(names)
        for name in names[:-10]:  # decisions arrive back to back
            waiting.discard(name)
            review._status_of(waiting)
        # The held-back status comes within STATUS_EVERY, naming who is really left.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while "(10 of 200)" not in " ".join(_statuses(experiment)[-1:]):
            assert loop.time() < deadline, _statuses(experiment)
            await asyncio.sleep(0.01)
        return experiment

    experiment = asyncio.run(decide_all_but_ten())
    statuses = _statuses(experiment)
    assert len(statuses) == 2, statuses  # the first at once, the latest held back
    assert statuses[-1] == ("waiting for the review by site_190, site_191, site_192, site_193, "
                            "site_194 and 5 more (10 of 200)")
    assert all(len(s) < 200 for s in statuses)
