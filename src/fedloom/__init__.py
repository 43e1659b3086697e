"""fedloom: federated-learning workflows written as one class of steps.

Write a flow with :class:`FLSpec` and the ``@aggregator`` / ``@collaborator`` placement decorators,
then run it with :class:`LocalRuntime` (one process or Ray). In steps, :func:`log_metric` records
numbers; after ``run()`` they are in ``flow.metrics``.
"""

from fedloom.aggregation import FedAvg, fedavg, weighted_mean
from fedloom.errors import (
    ExperimentRejected,
    FedloomError,
    FlowDefinitionError,
    FlowRunError,
    ParticipantError,
    PrivateAttributeError,
    ReviewDecision,
    StepFailed,
    TransitionError,
)
from fedloom.participants import Aggregator, Collaborator
from fedloom.runtime.local import LocalRuntime
from fedloom.spec import (
    FLSpec,
    aggregator,
    check_flow,
    collaborator,
    flow_picture,
    validate_flow,
)
from fedloom.state import share
from fedloom.stragglers import Faults, StragglerError, StragglerPolicy
from fedloom.tracking.api import log_metric, log_metrics

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # FederatedRuntime pulls in gRPC: load it when it is asked for, not with every import.
    if name == "FederatedRuntime":
        from fedloom.runtime.federated import FederatedRuntime

        return FederatedRuntime
    raise AttributeError(f"module 'fedloom' has no attribute {name!r}")


__all__ = [
    "Aggregator",
    "Collaborator",
    "ExperimentRejected",
    "FLSpec",
    "Faults",
    "FedAvg",
    "FederatedRuntime",
    "FedloomError",
    "FlowDefinitionError",
    "FlowRunError",
    "LocalRuntime",
    "ParticipantError",
    "PrivateAttributeError",
    "ReviewDecision",
    "StepFailed",
    "StragglerError",
    "StragglerPolicy",
    "TransitionError",
    "__version__",
    "aggregator",
    "check_flow",
    "collaborator",
    "fedavg",
    "flow_picture",
    "log_metric",
    "log_metrics",
    "share",
    "validate_flow",
    "weighted_mean",
]
