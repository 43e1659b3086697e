"""``FLSpec``: the base class of every flow.

A flow instance plays two roles. Built by the user, it holds the initial public state and the
runtime; after ``run()`` it holds the final aggregator state. While a step runs, the engine hands
the step a fresh instance of the same class whose ``__dict__`` *is* the state being worked on (plus
the participant's private attributes), so the user's helper methods and properties keep working.
Framework bookkeeping lives under ``_fl_``-prefixed keys and never counts as flow state.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

from fedloom.errors import FedloomError, FlowDefinitionError, Problem, TransitionError
from fedloom.spec.graph import FlowGraph, build_graph
from fedloom.spec.lint import check_graph, unknown_names
from fedloom.state import (
    SHARED_LISTS_KEY,
    State,
    Transition,
    drop_shared_list,
    take_shared_list,
    validate_name_list,
)

if TYPE_CHECKING:
    from fedloom.spec.render import FlowPicture
    from fedloom.tracking.records import Metrics

INTERNAL_PREFIX = "_fl_"
_STEP_KEY = "_fl_step"
_RUNTIME_KEY = "_fl_runtime"
_RUN_ID_KEY = "_fl_run_id"
# Set by ``fx run resume``: the next run() of a flow of this class resumes this run id.
_PENDING_RESUME: ContextVar[tuple[str, str] | None] = ContextVar("fedloom_resume", default=None)
_CHECKPOINT_KEY = "_fl_checkpoint"
_METRICS_KEY = "_fl_metrics"

log = logging.getLogger(__name__)

_NO_RUNTIME = ("this flow has no runtime yet; set flow.runtime = LocalRuntime(...) "
               "(or FederatedRuntime(...)) first")

_graphs: weakref.WeakKeyDictionary[type, FlowGraph] = weakref.WeakKeyDictionary()


class Runtime(Protocol):
    """What ``flow.runtime`` must provide."""

    def execute(self, flow: FLSpec) -> None: ...

    @property
    def collaborators(self) -> list[str]: ...


class StepRuntimeView:
    """``self.runtime`` inside a step: the collaborator names, and nothing that reaches another
    participant's objects."""

    __slots__ = ("_names",)

    def __init__(self, names: Sequence[str]) -> None:
        self._names = tuple(names)

    @property
    def collaborators(self) -> list[str]:
        """Names of every collaborator of the run (a fresh list each time)."""
        return list(self._names)

    def __repr__(self) -> str:
        return f"Runtime(collaborators={list(self._names)})"


class StepContext:
    """Bookkeeping of one executing step: who runs it and where it asked to go next."""

    __slots__ = ("participant", "runtime", "step", "step_names", "transition")

    def __init__(self, step: str, participant: str, runtime: StepRuntimeView,
                 step_names: frozenset[str]) -> None:
        self.step = step
        self.participant = participant
        self.runtime = runtime
        self.step_names = step_names  # what self.next() may go to
        self.transition: Transition | None = None


class _RunMetrics:
    """``flow.metrics``: what the latest run logged (:class:`fedloom.tracking.Metrics`).
    A non-data descriptor, so a flow's own attribute named ``metrics`` keeps working (and
    wins; ``fedloom.tracking.metrics_of(flow)`` reads the run's metrics then). Inside a step
    it is not there: a step sees only the flow's state."""

    def __get__(self, obj: FLSpec | None, owner: type | None = None) -> Any:
        if obj is None:
            return self
        if _STEP_KEY in obj.__dict__:
            raise AttributeError("metrics")  # on to FLSpec.__getattr__, which explains
        return metrics_of(obj)


class FLSpec:
    """Base class of a federated flow. Subclasses define ``@aggregator``/``@collaborator`` steps,
    starting with ``start`` and finishing with ``end``."""

    metrics = _RunMetrics()

    def __init__(self, checkpoint: bool = False) -> None:
        self.__dict__[_CHECKPOINT_KEY] = bool(checkpoint)

    # -- runtime and run --------------------------------------------------------------------

    @property
    def runtime(self) -> Any:
        """The runtime set by the user; inside a step, a view with only ``collaborators``."""
        ctx = self.__dict__.get(_STEP_KEY)
        if ctx is not None:
            return ctx.runtime
        runtime = self.__dict__.get(_RUNTIME_KEY)
        if runtime is None:
            raise AttributeError(_NO_RUNTIME)
        return runtime

    @runtime.setter
    def runtime(self, runtime: Runtime) -> None:
        if _STEP_KEY in self.__dict__:
            raise FedloomError("self.runtime cannot be changed inside a step")
        if not callable(getattr(runtime, "execute", None)):
            raise TypeError(f"flow.runtime must be a LocalRuntime or FederatedRuntime, "
                            f"got {type(runtime).__name__}")
        self.__dict__[_RUNTIME_KEY] = runtime

    @property
    def _run_id(self) -> str | None:
        """Id of the latest run of this flow object (the Metaflow run id when checkpointing)."""
        return self.__dict__.get(_RUN_ID_KEY)

    @property
    def _checkpoint(self) -> bool:
        return bool(self.__dict__.get(_CHECKPOINT_KEY, False))

    def run(self, resume: str | None = None) -> None:
        """Check the flow, then run it on ``self.runtime``. The final aggregator state's public
        attributes end up on this object; calling ``run()`` again starts a new run from them.

        ``resume=<run id>`` starts a new run from where that checkpointed run stopped: the
        state after its last completed aggregator step, going on where that step was going."""
        if _STEP_KEY in self.__dict__:
            raise FedloomError("run() was called inside a step; steps go on with self.next()")
        runtime = self.__dict__.get(_RUNTIME_KEY)
        if runtime is None:
            raise FedloomError(f"{type(self).__name__} has no runtime: set flow.runtime = "
                               "LocalRuntime(aggregator=..., collaborators=[...]) before run()")
        validate_flow(type(self))
        for warning in flow_warnings(type(self), known=public_state(self)):
            log.warning("%s", warning)
        pending = _PENDING_RESUME.get()
        if resume is None and pending is not None and pending[0] == type(self).__name__:
            resume = pending[1]
            _PENDING_RESUME.set(None)
        if resume is None:
            runtime.execute(self)
        else:
            runtime.execute(self, resume=str(resume))

    # -- inside steps -----------------------------------------------------------------------

    def next(self, step: Any, foreach: str | None = None, include: Sequence[str] | None = None,
             exclude: Sequence[str] | None = None) -> None:
        """Say which step comes after this one, and what is sent to it.

        ``foreach`` names a list attribute of collaborator names to fan out to; ``include`` (a
        whitelist) or ``exclude`` (a blacklist) filter what is sent across the transition.
        """
        ctx: StepContext | None = self.__dict__.get(_STEP_KEY)
        if ctx is None:
            raise FedloomError("self.next() only works inside a step while the flow runs; "
                               "start the flow with flow.run()")
        if ctx.transition is not None:
            raise TransitionError(
                f"self.next() was called twice (first to '{ctx.transition.step}'); call it "
                "once, as the last thing the step does (use if/else for branches)",
                step=ctx.step, participant=ctx.participant)
        name = getattr(step, "__name__", "")
        plain = _PLAIN_TRANSITIONS.get(name) \
            if foreach is None and include is None and exclude is None else None
        if plain is not None and name in ctx.step_names and \
                getattr(step, "__self__", None) is self:
            ctx.transition = plain  # the common case, once per task of a large round
        else:
            ctx.transition = _transition(ctx, step, foreach, include, exclude)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: explain what a step can see.
        if name.startswith("__") or name.startswith(INTERNAL_PREFIX):
            raise AttributeError(name)
        if name == "runtime":  # the property raised: say how to set one
            raise AttributeError(_NO_RUNTIME)
        own = take_shared_list(self.__dict__, name)  # a join input's list, copied when read
        if own is not None:
            return own
        ctx = self.__dict__.get(_STEP_KEY)
        where = f" in step '{ctx.step}' on '{ctx.participant}'" if ctx else ""
        visible = sorted(k for k in self.__dict__ if not k.startswith(INTERNAL_PREFIX))
        raise AttributeError(
            f"'{type(self).__name__}' has no attribute '{name}'{where}. Visible attributes: "
            f"{visible}. Private attributes are visible only in their owner's steps, and "
            "include=/exclude= on the way here may have filtered it out.")

    def __delattr__(self, name: str) -> None:
        # A join input's shared list (see take_shared_list) is gone too, read or not.
        if not drop_shared_list(self.__dict__, name) or name in self.__dict__:
            super().__delattr__(name)

    def __copy__(self) -> FLSpec:
        # A join input's shared lists become its own first, so that the copy holds the same
        # lists as the input, as with any other attribute.
        for name in list(self.__dict__.get(SHARED_LISTS_KEY, ())):
            take_shared_list(self.__dict__, name)
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        return clone

    # -- the flow as a graph (prefixed ``flow_`` so they don't collide with step names) ---------

    @classmethod
    def flow_graph(cls) -> FlowGraph:
        """The static graph of this flow class, read from its source."""
        return graph_of(cls)

    @classmethod
    def flow_check(cls) -> list[Problem]:
        """Every problem in this flow's definition (empty when it is valid)."""
        return check_flow(cls)

    @classmethod
    def flow_validate(cls) -> FlowGraph:
        """The graph of a valid flow; raises :class:`FlowDefinitionError` listing all problems."""
        return validate_flow(cls)

    @classmethod
    def flow_picture(cls) -> FlowPicture:
        """The flow drawn as text, Mermaid or DOT; shows itself as a diagram in notebooks."""
        return flow_picture(cls)


def graph_of(flow_cls: type[FLSpec]) -> FlowGraph:
    """The static graph of ``flow_cls`` (built once per class)."""
    graph = _graphs.get(flow_cls)
    if graph is None:
        graph = _graphs[flow_cls] = build_graph(flow_cls, FLSpec)
    return graph


def check_flow(flow_cls: type[FLSpec]) -> list[Problem]:
    """Every problem in the definition of ``flow_cls`` (empty when it is valid)."""
    return check_graph(graph_of(flow_cls), reserved=RESERVED_STEP_NAMES)


def flow_warnings(flow_cls: type[FLSpec], known: Iterable[str] = ()) -> list[Problem]:
    """Likely mistakes that are not certain: include/exclude/foreach names that nothing in the
    flow sets (``known``: attributes the flow object already has)."""
    return unknown_names(graph_of(flow_cls), known)


def validate_flow(flow_cls: type[FLSpec]) -> FlowGraph:
    """The graph of a valid flow; raises :class:`FlowDefinitionError` listing all problems."""
    problems = check_flow(flow_cls)
    if problems:
        raise FlowDefinitionError(flow_cls.__name__, problems)
    return graph_of(flow_cls)


def flow_picture(flow_cls: type[FLSpec]) -> FlowPicture:
    """``flow_cls`` drawn as text, Mermaid or DOT; shows itself as a diagram in notebooks."""
    from fedloom.spec.render import FlowPicture

    return FlowPicture(graph_of(flow_cls))


# Names FLSpec itself uses: a step with one of them would break the flow machinery.
RESERVED_STEP_NAMES = frozenset(n for n in vars(FLSpec) if not n.startswith("__")) | {"input"}


def public_state(flow: FLSpec) -> State:
    """The flow's public attributes (everything but fedloom's own bookkeeping)."""
    return {k: v for k, v in flow.__dict__.items() if not k.startswith(INTERNAL_PREFIX)}


def replace_public_state(flow: FLSpec, state: State) -> None:
    """Make ``state`` the flow's public attributes, keeping fedloom's bookkeeping."""
    internal = {k: v for k, v in flow.__dict__.items() if k.startswith(INTERNAL_PREFIX)}
    flow.__dict__.clear()
    flow.__dict__.update(state)
    flow.__dict__.update(internal)


def resume_next_run(flow_name: str, run_id: str) -> None:
    """Make the next ``run()`` of a flow named ``flow_name`` resume ``run_id`` (fx run resume)."""
    _PENDING_RESUME.set((flow_name, run_id))


def resume_pending() -> bool:
    """Whether a resume set by :func:`resume_next_run` has not been used yet."""
    return _PENDING_RESUME.get() is not None


def set_run_id(flow: FLSpec, run_id: str) -> None:
    flow.__dict__[_RUN_ID_KEY] = run_id


def is_checkpointing(flow: FLSpec) -> bool:
    return flow._checkpoint


def set_metrics(flow: FLSpec, metrics: Metrics) -> None:
    """Keep the metrics of the flow's latest run on it (``flow.metrics``)."""
    flow.__dict__[_METRICS_KEY] = metrics


def metrics_of(flow: FLSpec) -> Metrics:
    """The metrics of the latest run of ``flow`` (empty before its first run)."""
    from fedloom.tracking.records import Metrics

    found = flow.__dict__.get(_METRICS_KEY)
    return found if found is not None else Metrics()


def _transition(ctx: StepContext, step: Any, foreach: Any, include: Any,
                exclude: Any) -> Transition:
    def fail(message: str) -> TransitionError:
        return TransitionError(message, step=ctx.step, participant=ctx.participant)

    name = getattr(step, "__name__", None)
    if getattr(step, "__self__", None) is None or name not in ctx.step_names:
        raise fail(f"self.next() needs a step of the flow such as self.end, got {step!r}")
    if foreach is None and include is None and exclude is None:
        plain = _PLAIN_TRANSITIONS.get(name)  # the common case, once per task of a large round
        if plain is None:
            plain = _PLAIN_TRANSITIONS[name] = Transition(name)
        return plain
    if foreach is not None and not isinstance(foreach, str):
        raise fail(f"foreach= names an attribute holding collaborator names "
                   f"(e.g. foreach='collaborators'), got {foreach!r}")
    try:
        inc = validate_name_list(include, "include")
        exc = validate_name_list(exclude, "exclude")
    except TransitionError as err:
        raise fail(str(err)) from None
    if inc is not None and exc is not None:
        raise fail("self.next() was given both include= and exclude=; keep one")
    return Transition(name, foreach, inc, exc)


_PLAIN_TRANSITIONS: dict[str, Transition] = {}  # step name -> Transition(step): immutable
