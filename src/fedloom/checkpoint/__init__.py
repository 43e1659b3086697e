"""Checkpoints readable by the Metaflow client (``pip install fedloom[checkpoint]``).

The names are loaded on first use, so importing a submodule that needs no Metaflow (such as
``fedloom.checkpoint.artifacts`` where a collaborator runs) does not import Metaflow."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedloom.checkpoint.metaflow_store import (
        RESERVED_ARTIFACTS,
        MetaflowStore,
        default_datastore_root,
        serialize_artifacts,
    )

__all__ = ["RESERVED_ARTIFACTS", "MetaflowStore", "default_datastore_root", "serialize_artifacts"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("fedloom.checkpoint.metaflow_store"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
