"""What of a notebook's or a module's code goes into an experiment package: the code cells of a
notebook, exported with ``nbformat``, and in both cases every statement except those that run the
flow or build its runtime (a site must define the flow, not run it)."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedloom.errors import PackageError

RUNTIME_CLASSES = frozenset({"FederatedRuntime", "LocalRuntime"})
# Cell magics whose body is plain Python: the body is kept, the magic line dropped.
PYTHON_CELL_MAGICS = frozenset({"time", "timeit", "capture"})

_MAGIC_LINE = re.compile(
    r"\s*(?:[%!]"  # %magic, !shell
    r"|[A-Za-z_][\w.]*(?:\s*,\s*[A-Za-z_][\w.]*)*\s*=\s*[%!]"  # x = !ls, x = %time f()
    r"|\?{1,2}[\w.]+\s*$|[\w.]+\?{1,2}\s*$)")  # ?help, help?


def export_notebook(notebook_path: str | Path) -> str:
    """The notebook's code cells joined (each after a ``# %% cell N`` line, N counting all cells
    from 1), minus IPython magics and shell lines (``%...``, ``!...``; ``%%`` cells except
    ``%%time``/``%%timeit``/``%%capture``, whose body is kept) and the statements that build a
    runtime or run the flow: ``FederatedRuntime(...)``/``LocalRuntime(...)``, assignments to
    ``<x>.runtime``, ``<x>.runtime...`` uses, ``<x>.run()``, and statements using what those made
    (the runtime objects, and the flow after it ran). Removal is per statement (by AST); all else
    is kept as written. A cell that is not valid Python raises :class:`PackageError` naming it."""
    path = Path(notebook_path)
    cells = _read_notebook(path)
    state = ExportState()
    parts: list[str] = []
    for number, cell in enumerate(cells, start=1):
        if cell.get("cell_type") != "code":
            continue
        text = _export_cell(str(cell.get("source", "")), number, path, state)
        if text.strip():
            parts.append(f"# %% cell {number}\n{text}\n")
    code = "\n".join(parts)
    try:
        compile(code, str(path), "exec", dont_inherit=True)
    except SyntaxError as err:
        cell = _cell_at(code, err.lineno or 0)
        raise PackageError(f"the code exported from {path} does not compile ({err.msg}, in cell "
                           f"{cell}); a 'from __future__' import must be in the first code "
                           "cell") from None
    return code


def _read_notebook(path: Path) -> list[Any]:
    import nbformat

    read: Callable[..., Any] = nbformat.read  # untyped
    try:
        nb = read(str(path), as_version=4)
    except FileNotFoundError:
        raise PackageError(f"notebook {path} does not exist") from None
    except Exception as err:  # nbformat raises JSON, validation and version errors
        raise PackageError(f"cannot read notebook {path}: {err}") from None
    language = nb.get("metadata", {}).get("kernelspec", {}).get("language", "python")
    if str(language).lower() != "python":
        raise PackageError(f"notebook {path} is a {language} notebook; only Python notebooks "
                           "can be exported")
    return list(nb.cells)


def _export_cell(source: str, number: int, path: Path, state: ExportState) -> str:
    first, _, rest = source.lstrip("\n").partition("\n")
    if first.startswith("%%"):
        magic = first[2:].split(maxsplit=1)[0] if first[2:].strip() else ""
        if magic not in PYTHON_CELL_MAGICS:
            return ""
        source = rest
    tree = _parse(source)
    if tree is None:
        source = _drop_magic_lines(source)
        try:
            tree = ast.parse(source)
        except SyntaxError as err:
            raise PackageError(f"cell {number} of {path} is not valid Python (line {err.lineno} "
                               f"of the cell: {err.msg}); fix or remove it") from None
    text = StatementFilter(source, state).run(tree)
    text = re.sub(r"\A(?:[ \t]*\n)+", "", text).rstrip()
    try:
        compile(text, f"cell {number}", "exec", dont_inherit=True)
    except SyntaxError as err:
        raise PackageError(f"cell {number} of {path} cannot run as a module ({err.msg}, line "
                           f"{err.lineno} of the cell); fix or remove it") from None
    return text


def _parse(source: str) -> ast.Module | None:
    try:
        return ast.parse(source)
    except SyntaxError:
        return None


def _drop_magic_lines(source: str) -> str:
    out = []
    for line in source.splitlines(keepends=True):
        if _MAGIC_LINE.match(line):
            indent = line[:len(line) - len(line.lstrip())]
            if indent:  # inside a block: keep the block valid
                out.append(f"{indent}pass\n")
            continue
        out.append(line)
    return "".join(out)


def _cell_at(code: str, lineno: int) -> str:
    number = "?"
    for line in code.splitlines()[:lineno]:
        if line.startswith("# %% cell "):
            number = line.removeprefix("# %% cell ")
    return number


@dataclass
class ExportState:
    """What the export knows across cells: names bound by imports, names of the runtime classes,
    and names made by removed statements (which later statements must not use)."""

    imported: set[str] = field(default_factory=set)
    runtime_names: set[str] = field(default_factory=lambda: set(RUNTIME_CLASSES))
    tainted: set[str] = field(default_factory=set)


class StatementFilter:
    """Removes run/runtime statements from one cell's source, keeping everything else as is."""

    def __init__(self, source: str, state: ExportState) -> None:
        self.source = source
        self.lines = re.findall(r"[^\n]*\n|[^\n]+\Z", source)  # as the tokenizer counts lines
        self.state = state
        self.edits: list[tuple[int, int, int, int, str]] = []  # line, col, end line, col, text

    def run(self, tree: ast.Module) -> str:
        self._body(tree.body, nested=False)
        starts = [0]
        for line in self.lines:
            starts.append(starts[-1] + len(line))
        text = self.source
        for l0, c0, l1, c1, new in sorted(self.edits, reverse=True):
            text = text[:starts[l0] + c0] + new + text[starts[l1] + c1:]
        return text

    def _body(self, body: list[ast.stmt], nested: bool) -> None:
        removed = [self._visit(stmt) for stmt in body]
        if not any(removed):
            return
        need_pass = nested and all(removed)
        start = 0
        for end in range(1, len(body) + 1):  # groups of statements sharing lines (a; b)
            if end < len(body) and body[end - 1].end_lineno == body[end].lineno:
                continue
            if any(removed[start:end]):
                self._edit(body[start:end], removed[start:end], need_pass and start == 0)
            start = end

    def _edit(self, group: list[ast.stmt], removed: list[bool], need_pass: bool) -> None:
        first, last = group[0], group[-1]
        l0, l1 = first.lineno - 1, (last.end_lineno or last.lineno) - 1
        c0 = self._col(l0, first.col_offset)
        c1 = self._col(l1, last.end_col_offset or 0)
        kept = [ast.get_source_segment(self.source, s) or ""
                for s, r in zip(group, removed, strict=True) if not r]
        new = "; ".join(kept) or ("pass" if need_pass else "")
        before, after = self.lines[l0][:c0], self.lines[l1][c1:].strip()
        if not new and not before.strip() and (not after or after.startswith("#")):
            self.edits.append((l0, 0, l1 + 1, 0, ""))  # whole lines
        else:
            self.edits.append((l0, c0, l1, c1, new))

    def _col(self, line: int, byte_col: int) -> int:
        return len(self.lines[line].encode("utf-8")[:byte_col].decode("utf-8", "replace"))

    def _visit(self, stmt: ast.stmt) -> bool:
        """Whether ``stmt`` goes; recurses into compound statements, which always stay."""
        state = self.state
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            for alias in stmt.names:
                bound = alias.asname or alias.name.split(".")[0]
                if isinstance(stmt, ast.ImportFrom) and alias.name in RUNTIME_CLASSES:
                    state.runtime_names.add(bound)
                state.imported.add(bound)
                state.tainted.discard(bound)
            return False
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            state.tainted.discard(stmt.name)
            return False
        bodies = child_bodies(stmt)
        if bodies:
            for body in bodies:
                self._body(body, nested=True)
            return False
        stored = {n.id for n in _walk(stmt) if isinstance(n, ast.Name)
                  and isinstance(n.ctx, ast.Store)}
        receivers = self._runs_or_builds(stmt)
        if receivers is None:
            state.tainted -= stored
            return False
        state.tainted |= stored | receivers
        return True

    def _runs_or_builds(self, stmt: ast.stmt) -> set[str] | None:
        """None when ``stmt`` stays; else the names it ran (``flow`` of ``flow.run()``)."""
        state = self.state
        hit = False
        receivers: set[str] = set()
        for node in _walk(stmt):
            if isinstance(node, ast.Call):
                func = node.func
                callee = func.id if isinstance(func, ast.Name) else \
                    func.attr if isinstance(func, ast.Attribute) else None
                if callee in state.runtime_names:
                    hit = True
                elif isinstance(func, ast.Attribute) and func.attr == "run" and \
                        not node.args and not node.keywords:
                    hit = True
                    receivers |= {n.id for n in ast.walk(func.value) if isinstance(n, ast.Name)}
            elif isinstance(node, ast.Attribute) and node.attr == "runtime":
                hit |= isinstance(node.ctx, ast.Store) or (
                    isinstance(node.value, ast.Name) and node.value.id not in state.imported)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                hit |= node.id in state.tainted
        return receivers if hit else None


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """``ast.walk`` that does not enter lambdas (defining one runs nothing)."""
    todo = [node]
    while todo:
        current = todo.pop()
        yield current
        todo.extend(child for child in ast.iter_child_nodes(current)
                    if not isinstance(child, ast.Lambda))


def child_bodies(stmt: ast.stmt) -> list[list[ast.stmt]]:
    """The statement lists nested in a compound statement (not in function or class bodies)."""
    if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return []
    bodies: list[list[ast.stmt]] = [getattr(stmt, name) for name in
                                    ("body", "orelse", "finalbody") if getattr(stmt, name, None)]
    bodies += [h.body for h in getattr(stmt, "handlers", ())]
    bodies += [case.body for case in getattr(stmt, "cases", ())]
    return bodies
