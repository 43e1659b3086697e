"""Lint rules: one small function per rule, each yielding the problems it finds.

``check_graph`` runs them all and returns every problem at once, so a user fixes a broken flow in
one pass rather than one error at a time.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator

from fedloom.errors import Problem
from fedloom.spec.graph import FlowGraph, NameList, StepNode

Rule = Callable[[FlowGraph], Iterator[Problem]]
RULES: list[Rule] = []


def rule(func: Rule) -> Rule:
    RULES.append(func)
    return func


def check_graph(graph: FlowGraph, reserved: frozenset[str] = frozenset()) -> list[Problem]:
    """Every problem found by every rule, in rule order. Without source, only that is reported:
    the other rules would report phantom problems about transitions they cannot see.
    ``reserved`` are names a step must not take (FLSpec's own attributes)."""
    unreadable = list(source_is_readable(graph))
    if unreadable:
        return unreadable
    clashes = [_at(node, f"a step can't be named '{node.name}': FLSpec uses that name",
                   f"rename the step (e.g. '{node.name}_step')")
               for node in graph.steps.values() if node.name in reserved]
    return clashes + [problem for check in RULES for problem in check(graph)]


def _at(node: StepNode, message: str, fix: str, line: int | None = None) -> Problem:
    return Problem(message, fix, step=node.name, file=node.file, line=line or node.line)


def _suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


@rule
def source_is_readable(graph: FlowGraph) -> Iterator[Problem]:
    for node in graph.steps.values():
        if not node.source_available:
            yield _at(node, "the source of this step cannot be read, so its transitions cannot be "
                      "checked", "define flows in a .py file or a notebook cell, not via exec()")


@rule
def has_start_and_end(graph: FlowGraph) -> Iterator[Problem]:
    for name in ("start", "end"):
        if name not in graph.steps:
            yield Problem(f"the flow has no '{name}' step", f"add an @aggregator step named "
                          f"'{name}' (every flow begins with start and finishes with end)",
                          file=graph.file, line=graph.line)


@rule
def start_and_end_on_aggregator(graph: FlowGraph) -> Iterator[Problem]:
    for name in ("start", "end"):
        node = graph.steps.get(name)
        if node and node.role != "aggregator":
            yield _at(node, f"'{name}' is placed on the {node.role}",
                      f"decorate '{name}' with @aggregator")


@rule
def decorated_steps(graph: FlowGraph) -> Iterator[Problem]:
    for node in graph.undecorated.values():
        yield _at(node, "this method calls self.next() but has no placement decorator",
                  "add @aggregator or @collaborator above it")


@rule
def next_call_shape(graph: FlowGraph) -> Iterator[Problem]:
    for node, call in graph.edges():
        if call.target is None:
            yield _at(node, f"self.next() is given '{call.target_text}', not a step of the flow",
                      "pass the step method itself, e.g. self.next(self.train)", call.line)
        for extra in call.extra_args:
            yield _at(node, f"self.next() got an unexpected argument '{extra}'",
                      "self.next takes one step plus foreach=, include= or exclude=", call.line)


@rule
def targets_are_steps(graph: FlowGraph) -> Iterator[Problem]:
    steps = list(graph.steps)
    for node, call in graph.edges():
        target = call.target
        if target is None or target in graph.steps:
            continue
        if target in graph.undecorated or target in graph.attributes:
            yield _at(node, f"self.next() goes to '{target}', which is not a step "
                      "(it has no @aggregator/@collaborator)",
                      f"decorate '{target}' with @aggregator or @collaborator", call.line)
        else:
            yield _at(node, f"self.next() goes to '{target}', which does not exist in "
                      f"{graph.flow_name}.{_suggest(target, steps)}",
                      f"use one of: {', '.join(steps)}", call.line)


@rule
def steps_call_next(graph: FlowGraph) -> Iterator[Problem]:
    for node in graph.steps.values():
        if not node.source_available:
            continue
        if node.name == "end" and node.next_calls:
            yield _at(node, "'end' calls self.next(), but the flow finishes at end",
                      "remove the self.next() call from 'end'", node.next_calls[0].line)
        elif node.name != "end" and not node.next_calls:
            yield _at(node, "this step never calls self.next(), so the flow cannot go on",
                      "end the step with self.next(self.<next step>) (or self.next(self.end))")


@rule
def no_nested_fan_out(graph: FlowGraph) -> Iterator[Problem]:
    for node, call in graph.edges():
        if node.role == "collaborator" and call.has_foreach:
            yield _at(node, "foreach= is used in a collaborator step (a nested fan-out)",
                      "only aggregator steps can fan out; go back to an aggregator step first",
                      call.line)


@rule
def fan_out_needs_foreach(graph: FlowGraph) -> Iterator[Problem]:
    for node, call in graph.edges():
        target = graph.steps.get(call.target or "")
        if target is None or node.role != "aggregator":
            continue
        if target.role == "collaborator" and not call.has_foreach:
            yield _at(node, f"the aggregator goes to collaborator step '{target.name}' without "
                      "foreach=", f"say which collaborators run it: self.next(self.{target.name},"
                      " foreach='collaborators')", call.line)
        if target.role == "aggregator" and call.has_foreach:
            yield _at(node, f"foreach= fans out to '{target.name}', which runs on the aggregator",
                      f"make '{target.name}' a @collaborator step, or drop foreach=", call.line)


@rule
def foreach_is_a_name(graph: FlowGraph) -> Iterator[Problem]:
    for node, call in graph.edges():
        if call.foreach_is_literal_non_name:
            yield _at(node, f"foreach={call.foreach_text} is not the name of an attribute",
                      "name a list attribute of collaborator names, e.g. foreach='collaborators'",
                      call.line)


@rule
def include_exclude_shape(graph: FlowGraph) -> Iterator[Problem]:
    for node, call in graph.edges():
        if call.include is not None and call.exclude is not None:
            yield _at(node, "self.next() is given both include= and exclude=",
                      "keep one: include= lists what is sent, exclude= what is held back",
                      call.line)
        for kind, names in (("include", call.include), ("exclude", call.exclude)):
            if names is not None and not names.is_list:
                yield _at(node, f"{kind}={names.text} is not a list of attribute names",
                          f"write {kind}=['model', ...] (a list of names)", call.line)


def unknown_names(graph: FlowGraph, known: Iterable[str] = ()) -> list[Problem]:
    """Warnings: include=/exclude=/foreach= names that nothing visible ever sets — no method of
    the flow, not the framework (``input``), not ``known`` (the initial state). Only warnings:
    helper functions outside the class may set attributes too; the run still checks names."""
    if graph.dynamic_attributes:
        return []
    available = graph.assigned | {"input"} | set(known)
    problems = []
    for node, call in graph.edges():
        for kind, names in (("include", call.include), ("exclude", call.exclude),
                            ("foreach", NameList((call.foreach,), "", True) if call.foreach
                             else None)):
            for name in (names.names or ()) if names else ():
                if name not in available:
                    problems.append(_at(
                        node, f"{kind}= names '{name}', which no step or __init__ of "
                        f"{graph.flow_name} ever sets.{_suggest(name, available)}",
                        "fix the name, or set the attribute (in __init__ or a step); private "
                        "attributes are never sent, so they need no exclude=", call.line))
    return problems


@rule
def join_signatures(graph: FlowGraph) -> Iterator[Problem]:
    from_collaborator, from_aggregator = _incoming_roles(graph)
    for node in graph.steps.values():
        extra = [p for p in node.params if p != "inputs"]
        if extra:
            yield _at(node, f"step takes unexpected parameters {extra}",
                      "steps take only self (joins: self, inputs); use attributes instead")
        if node.role == "collaborator" and node.takes_inputs:
            yield _at(node, "a collaborator step takes 'inputs', but only aggregator joins do",
                      f"remove 'inputs' from {node.name}'s parameters")
        if node.role != "aggregator":
            continue
        if node.name in from_collaborator and not node.takes_inputs:
            yield _at(node, "this step follows collaborator steps (a join) but has no 'inputs'",
                      f"declare it as def {node.name}(self, inputs):")
        if node.takes_inputs and (node.name in from_aggregator or
                                  node.name not in from_collaborator):
            came_from = sorted(from_aggregator.get(node.name, ())) or ["nowhere"]
            yield _at(node, "this step takes 'inputs' but is not a join: it is reached from "
                      f"{', '.join(came_from)}, not from collaborator steps",
                      f"drop 'inputs', or reach '{node.name}' only from collaborator steps")


def _incoming_roles(graph: FlowGraph) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    from_collaborator: dict[str, set[str]] = {}
    from_aggregator: dict[str, set[str]] = {}
    for node, call in graph.edges():
        if call.target in graph.steps:
            bucket = from_collaborator if node.role == "collaborator" else from_aggregator
            bucket.setdefault(call.target, set()).add(node.name)
    return from_collaborator, from_aggregator


@rule
def loops_can_reach_end(graph: FlowGraph) -> Iterator[Problem]:
    """A loop with no way out would run forever; report each such loop once."""
    if "start" not in graph.steps or "end" not in graph.steps:
        return
    reaching_end = _steps_reaching(graph, "end")
    trapped = _after(graph, "start") | {"start"}
    trapped -= reaching_end
    reported: set[str] = set()
    for name in graph.steps:
        if name in trapped and name not in reported:
            loop = _loop_through(graph, name)
            reported.update(loop)
            if loop:  # else a dead end, which the rules about next() report
                yield _at(graph.steps[name], f"the loop {' -> '.join([*loop, name])} never "
                          "reaches 'end', so the flow would run forever",
                          "add a transition (e.g. under an if) that leads towards self.end")


def _after(graph: FlowGraph, name: str) -> set[str]:
    """Steps reachable from ``name`` in one or more transitions."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        for target in graph.steps[todo.pop()].targets:
            if target in graph.steps and target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _loop_through(graph: FlowGraph, name: str) -> list[str]:
    """The steps on cycles through ``name``, in graph order (empty if it is on none)."""
    forward = _after(graph, name)
    if name not in forward:
        return []
    return [m for m in graph.steps if m in forward and name in _after(graph, m)]


def _steps_reaching(graph: FlowGraph, goal: str) -> set[str]:
    reaching = {goal}
    changed = True
    while changed:
        changed = False
        for node in graph.steps.values():
            if node.name not in reaching and any(t in reaching for t in node.targets):
                reaching.add(node.name)
                changed = True
    return reaching

