"""The federation tests' nodes: fedloom.federation.localhost with two users and envoys whose
private ``data`` is a vector of one value."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from fedloom.federation.localhost import (
    FX,
    LocalFederation,
    NodeProcess,
    local_federation,
    make_certificates,
)

__all__ = ["FX", "Node", "envoy_config", "federation", "make_certificates"]

ROOT = Path(__file__).resolve().parents[2]
Node = NodeProcess

PRIVATE_ATTRIBUTES = '''
import numpy as np

aggregator_attrs = {"secret": "aggregator-only"}

def envoy_data(value):
    return {"data": np.full(3, float(value))}
'''



def director_config(review: bool | None = False, review_timeout: float | None = None) -> str:
    """Review is off unless asked for (None: the key is left out, so the default applies)."""
    flag = "" if review is None else f"  review_experiment: {str(review).lower()}\n"
    if review_timeout is not None:
        flag += f"  review_timeout: {review_timeout}\n"
    return ("settings:\n  listen_host: 127.0.0.1\n  listen_port: 0\n"
            f"  envoy_health_check_period: 1\n{flag}"
            "aggregator:\n  private_attributes: private_attributes.aggregator_attrs\n")


def envoy_config(name: str, value: float, review: bool = False) -> str:
    return (f"settings:\n  review_experiment: {str(review).lower()}\n'{name}':\n"
            "  callable_func:\n    template: private_attributes.envoy_data\n"
            f"    settings: {{value: {value}}}\n")


@contextmanager
def federation(folder: Path, envoys: dict[str, float], tls: bool = True,
               director_review: bool | None = False, reviewing_envoys: Collection[str] = (),
               terminal: bool = False, review_timeout: float | None = None
               ) -> Iterator[LocalFederation]:
    """A director and envoys (name -> the value of its private data), all registered; plans
    are reviewed by the director if ``director_review`` and by ``reviewing_envoys``."""
    pythonpath = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    with local_federation(folder, {name: envoy_config(name, value, name in reviewing_envoys)
                                   for name, value in envoys.items()},
                          director_config(director_review, review_timeout),
                          files={"private_attributes.py": PRIVATE_ATTRIBUTES},
                          tls=tls, users=("alice", "mallory"),
                          env={"PYTHONPATH": pythonpath}, director_terminal=terminal) as fed:
        yield fed
