"""The static graph of a flow, read from the AST of its step methods.

Like Metaflow's ``graph.py``, the graph is built from source, not by running anything: every
``self.next(self.<step>, foreach=..., include=[...], exclude=[...])`` call becomes an edge with
its file and line, so the lint rules can point at the exact spot a user has to change.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fedloom.spec.placement import Placement, placement_of

TRANSITION_KEYWORDS = ("foreach", "include", "exclude")


@dataclass(frozen=True)
class NameList:
    """An ``include=``/``exclude=`` argument as written: literal names, or an expression."""

    names: tuple[str, ...] | None  # None when the value is computed at run time
    text: str
    is_list: bool  # False for e.g. include='model' (a string, not a list)


@dataclass(frozen=True)
class NextCall:
    """One ``self.next(...)`` call in a step's body."""

    line: int
    target: str | None  # the step name, or None when the first argument is not self.<name>
    target_text: str
    foreach: str | None = None  # literal attribute name
    foreach_text: str | None = None  # the expression as written, when given
    include: NameList | None = None
    exclude: NameList | None = None
    extra_args: tuple[str, ...] = ()  # positional arguments after the target, or unknown keywords
    foreach_is_literal_non_name: bool = False  # e.g. foreach=['a', 'b'] instead of an attribute

    @property
    def has_foreach(self) -> bool:
        return self.foreach_text is not None


@dataclass
class StepNode:
    """A step method of the flow: its placement, signature, source position and transitions."""

    name: str
    placement: Placement | None
    file: str
    line: int
    params: tuple[str, ...]  # parameters after ``self``
    next_calls: list[NextCall] = field(default_factory=list)
    source_available: bool = True

    @property
    def role(self) -> str | None:
        return self.placement.role if self.placement else None

    @property
    def takes_inputs(self) -> bool:
        return "inputs" in self.params

    @property
    def targets(self) -> list[str]:
        """Names of the steps this one may go to, in source order, without repeats."""
        seen: dict[str, None] = {}
        for call in self.next_calls:
            if call.target is not None:
                seen.setdefault(call.target, None)
        return list(seen)


@dataclass
class FlowGraph:
    """All steps of a flow class, plus methods that look like steps but are not decorated."""

    flow_name: str
    file: str
    line: int
    steps: dict[str, StepNode]
    undecorated: dict[str, StepNode]  # methods calling self.next() without a placement
    attributes: frozenset[str]  # every attribute name of the class (for "not a step" checks)
    assigned: frozenset[str] = frozenset()  # self.<name> = ... anywhere in the flow's methods
    dynamic_attributes: bool = False  # setattr(self, <expr>) or self.__dict__: names unknowable

    def __getitem__(self, name: str) -> StepNode:
        return self.steps[name]

    def __contains__(self, name: object) -> bool:
        return name in self.steps

    def is_join(self, name: str) -> bool:
        node = self.steps.get(name)
        return bool(node and node.role == "aggregator" and node.takes_inputs)

    def edges(self) -> Iterator[tuple[StepNode, NextCall]]:
        for node in self.steps.values():
            for call in node.next_calls:
                yield node, call


def build_graph(flow_cls: type, base_cls: type) -> FlowGraph:
    """Read every step of ``flow_cls`` (inherited ones too) into a graph. Never raises on
    malformed flows: problems are left for the lint rules to report."""
    steps: dict[str, StepNode] = {}
    undecorated: dict[str, StepNode] = {}
    for name, func in _user_functions(flow_cls, base_cls):
        placement = placement_of(func)
        node = _read_step(name, func, placement)
        if placement is not None:
            steps[name] = node
        elif node.next_calls:
            undecorated[name] = node
    file, line = _class_position(flow_cls)
    assigned, dynamic = _assigned_names(flow_cls, base_cls)
    return FlowGraph(
        flow_name=flow_cls.__name__,
        file=file,
        line=line,
        steps=_ordered(steps),
        undecorated=undecorated,
        attributes=frozenset(dir(flow_cls)),
        assigned=assigned,
        dynamic_attributes=dynamic,
    )


def _assigned_names(flow_cls: type, base_cls: type) -> tuple[frozenset[str], bool]:
    """Attribute names the flow's own methods (``__init__`` included) assign on ``self``, and
    whether some assignment is dynamic (then no name can be called unknown)."""
    names: set[str] = set()
    dynamic = False
    for klass in flow_cls.__mro__:
        if klass is base_cls or klass is object or issubclass(base_cls, klass):
            continue
        for value in vars(klass).values():
            if not inspect.isfunction(value):
                continue
            try:
                tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(value))))
            except (OSError, TypeError, SyntaxError):
                return frozenset(names), True
            fdef = tree.body[0] if tree.body else None
            if isinstance(fdef, ast.FunctionDef | ast.AsyncFunctionDef) and fdef.args.args:
                dynamic |= _collect_assignments(fdef, fdef.args.args[0].arg, names)
    return frozenset(names), dynamic


def _collect_assignments(fdef: ast.AST, self_name: str, names: set[str]) -> bool:
    dynamic = False
    for node in ast.walk(fdef):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                isinstance(node.value, ast.Name) and node.value.id == self_name:
            names.add(node.attr)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id == "setattr" and node.args and isinstance(node.args[0], ast.Name) \
                and node.args[0].id == self_name:
            target = node.args[1] if len(node.args) > 1 else None
            if isinstance(target, ast.Constant) and isinstance(target.value, str):
                names.add(target.value)
            else:
                dynamic = True
        elif isinstance(node, ast.Attribute) and node.attr == "__dict__" and \
                isinstance(node.value, ast.Name) and node.value.id == self_name:
            dynamic = True
    return dynamic


def _user_functions(flow_cls: type, base_cls: type) -> Iterator[tuple[str, Any]]:
    """Functions defined by the user's classes (not by FLSpec), most-derived definition wins."""
    seen: set[str] = set()
    for klass in flow_cls.__mro__:
        if klass is base_cls or klass is object or issubclass(base_cls, klass):
            continue
        for name, value in vars(klass).items():
            if name in seen:
                continue
            seen.add(name)
            func = inspect.unwrap(value) if inspect.isfunction(value) else None
            if func is not None and (placement_of(value) or placement_of(func) or
                                     _mentions_next(func)):
                yield name, value


def _mentions_next(func: Any) -> bool:
    code = getattr(func, "__code__", None)
    return bool(code and "next" in code.co_names)


def _ordered(steps: dict[str, StepNode]) -> dict[str, StepNode]:
    # Source order reads best in pictures and error lists; start first, end last.
    def key(node: StepNode) -> tuple[int, str, int]:
        rank = 0 if node.name == "start" else 2 if node.name == "end" else 1
        return (rank, node.file, node.line)

    return {n.name: n for n in sorted(steps.values(), key=key)}


def _class_position(flow_cls: type) -> tuple[str, int]:
    try:
        file = inspect.getsourcefile(flow_cls) or "<unknown>"
    except (OSError, TypeError):
        file = "<unknown>"
    try:
        line = inspect.getsourcelines(flow_cls)[1]
    except (OSError, TypeError):
        line = 0
    return file, line


def _read_step(name: str, value: Any, placement: Placement | None) -> StepNode:
    func = inspect.unwrap(value)
    code = func.__code__
    params = tuple(inspect.signature(func).parameters)[1:]
    node = StepNode(name, placement, code.co_filename, code.co_firstlineno, params)
    try:
        source = textwrap.dedent(inspect.getsource(func))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        node.source_available = False
        return node
    fdef = next((n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)),
                None)
    if fdef is None:
        node.source_available = False
        return node
    offset = code.co_firstlineno - 1
    self_name = fdef.args.args[0].arg if fdef.args.args else "self"
    node.line = fdef.lineno + offset
    node.next_calls = [_read_next_call(call, self_name, offset)
                       for call in ast.walk(fdef) if _is_next_call(call, self_name)]
    node.next_calls.sort(key=lambda c: c.line)
    return node


def _is_next_call(node: ast.AST, self_name: str) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "next" and isinstance(node.func.value, ast.Name)
            and node.func.value.id == self_name)


def _read_next_call(call: ast.AST, self_name: str, offset: int) -> NextCall:
    assert isinstance(call, ast.Call)
    target, target_text = None, "<nothing>"
    if call.args:
        first = call.args[0]
        target_text = ast.unparse(first)
        if (isinstance(first, ast.Attribute) and isinstance(first.value, ast.Name)
                and first.value.id == self_name):
            target = first.attr
    extras = [ast.unparse(a) for a in call.args[1:]]
    kwargs: dict[str, Any] = {}
    for kw in call.keywords:
        if kw.arg in TRANSITION_KEYWORDS:
            kwargs[kw.arg] = kw.value
        else:
            extras.append(f"{kw.arg}=" if kw.arg else "**" + ast.unparse(kw.value))
    foreach_node = kwargs.get("foreach")
    if isinstance(foreach_node, ast.Constant) and foreach_node.value is None:
        foreach_node = None  # foreach=None is the same as not giving it
    foreach = None
    if isinstance(foreach_node, ast.Constant) and isinstance(foreach_node.value, str):
        foreach = foreach_node.value
    literal_non_name = isinstance(foreach_node, ast.List | ast.Tuple | ast.Dict | ast.Set) or (
        isinstance(foreach_node, ast.Constant) and not isinstance(foreach_node.value, str))
    return NextCall(
        line=call.lineno + offset,
        target=target,
        target_text=target_text,
        foreach=foreach,
        foreach_text=ast.unparse(foreach_node) if foreach_node is not None else None,
        include=_name_list(kwargs.get("include")),
        exclude=_name_list(kwargs.get("exclude")),
        extra_args=tuple(extras),
        foreach_is_literal_non_name=literal_non_name,
    )


def _name_list(node: ast.expr | None) -> NameList | None:
    if node is None:
        return None
    text = ast.unparse(node)
    if isinstance(node, ast.Constant):
        # include=None is the same as not giving it.
        return None if node.value is None else NameList(None, text, is_list=False)
    if isinstance(node, ast.List | ast.Tuple):
        if all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
            return NameList(tuple(e.value for e in node.elts  # type: ignore[attr-defined]
                                  ), text, is_list=True)
        if any(isinstance(e, ast.Constant) and not isinstance(e.value, str) for e in node.elts):
            return NameList(None, text, is_list=False)
    return NameList(None, text, is_list=True)
