"""The flow language: FLSpec, placement decorators, the static graph and its lint rules."""

from fedloom.spec.flowspec import FLSpec
from fedloom.spec.placement import aggregator, collaborator

__all__ = ["FLSpec", "aggregator", "collaborator"]
