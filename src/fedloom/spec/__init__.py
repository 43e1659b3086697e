"""The flow language: FLSpec, placement decorators, the static graph and its lint rules."""

from fedloom.spec.flowspec import FLSpec, check_flow, flow_picture, validate_flow
from fedloom.spec.placement import aggregator, collaborator

__all__ = ["FLSpec", "aggregator", "check_flow", "collaborator", "flow_picture", "validate_flow"]
