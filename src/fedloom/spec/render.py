"""Pictures of a flow graph: plain text for terminals, Mermaid and DOT for notebooks and docs."""

from __future__ import annotations

from fedloom.spec.graph import FlowGraph, NextCall, StepNode


def _edge_label(call: NextCall) -> str:
    parts = []
    if call.foreach_text is not None:
        parts.append(f"foreach {call.foreach or call.foreach_text}")
    if call.include is not None:
        parts.append(f"include {', '.join(call.include.names or [call.include.text])}")
    if call.exclude is not None:
        parts.append(f"exclude {', '.join(call.exclude.names or [call.exclude.text])}")
    return "; ".join(parts)


def _edges(graph: FlowGraph) -> list[tuple[StepNode, NextCall]]:
    return [(n, c) for n, c in graph.edges() if c.target in graph.steps]


def _order(graph: FlowGraph) -> dict[str, int]:
    return {name: i for i, name in enumerate(graph.steps)}


def _kind(graph: FlowGraph, node: StepNode) -> str:
    role = node.role or "no placement"
    return f"{role}, join" if graph.is_join(node.name) else role


def to_text(graph: FlowGraph) -> str:
    """The flow as an indented list: each step, its placement, and where it goes."""
    order = _order(graph)
    lines = [f"{graph.flow_name}  ({graph.file}:{graph.line})"]
    width = max((len(n) for n in graph.steps), default=0) + 9
    for node in graph.steps.values():
        head = f"{node.name}(inputs)" if node.takes_inputs else node.name
        lines.append(f"  {head:<{width}} [{_kind(graph, node)}]")
        calls = [c for c in node.next_calls if c.target in graph.steps]
        for i, call in enumerate(calls):
            branch = "└─▶" if i == len(calls) - 1 else "├─▶"
            notes = [_edge_label(call)] if _edge_label(call) else []
            if order[call.target or ""] <= order[node.name]:
                notes.append("loop back")
            if len(calls) > 1:
                notes.append(f"branch, line {call.line}")
            extra = f"   ({'; '.join(notes)})" if notes else ""
            lines.append(f"      {branch} {call.target}{extra}")
    return "\n".join(lines)


def _mermaid_id(name: str) -> str:
    return f"s_{name}"


def to_mermaid(graph: FlowGraph) -> str:
    """A Mermaid flowchart: aggregator steps as rounded boxes, collaborator steps as stacks."""
    lines = ["flowchart TD"]
    for node in graph.steps.values():
        label = f"{node.name}<br/><small>{_kind(graph, node)}</small>"
        sid = _mermaid_id(node.name)
        lines.append(f'    {sid}(["{label}"])' if node.role == "aggregator"
                     else f'    {sid}[["{label}"]]')
    for node, call in _edges(graph):
        label = _edge_label(call)
        arrow = f' -- "{label}" -->' if label else " -->"
        lines.append(f"    {_mermaid_id(node.name)}{arrow} {_mermaid_id(call.target or '')}")
    lines.append("    classDef aggregator fill:#dbeafe,stroke:#1d4ed8")
    lines.append("    classDef collaborator fill:#dcfce7,stroke:#15803d")
    for role in ("aggregator", "collaborator"):
        ids = [_mermaid_id(n.name) for n in graph.steps.values() if n.role == role]
        if ids:
            lines.append(f"    class {','.join(ids)} {role}")
    return "\n".join(lines)


def to_dot(graph: FlowGraph) -> str:
    """Graphviz DOT source of the flow (render with ``dot -Tsvg``)."""
    lines = [f'digraph "{graph.flow_name}" {{', "  rankdir=TB; node [fontname=Helvetica];"]
    for node in graph.steps.values():
        color = "#dbeafe" if node.role == "aggregator" else "#dcfce7"
        shape = "box, style=\"rounded,filled\"" if node.role == "aggregator" else \
            "box3d, style=filled"
        lines.append(f'  "{node.name}" [shape={shape}, fillcolor="{color}", '
                     f'label="{node.name}\\n{_kind(graph, node)}"];')
    for node, call in _edges(graph):
        label = _edge_label(call).replace('"', "'")
        lines.append(f'  "{node.name}" -> "{call.target}" [label="{label}"];')
    lines.append("}")
    return "\n".join(lines)


class FlowPicture:
    """A flow's picture. ``str()`` gives text; in Jupyter it renders as a Mermaid diagram."""

    def __init__(self, graph: FlowGraph) -> None:
        self.graph = graph

    def text(self) -> str:
        return to_text(self.graph)

    def mermaid(self) -> str:
        return to_mermaid(self.graph)

    def dot(self) -> str:
        return to_dot(self.graph)

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        return self.text()

    def _repr_markdown_(self) -> str:
        return f"```mermaid\n{self.mermaid()}\n```"
