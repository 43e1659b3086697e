"""What of a notebook's or a script's code goes into an experiment package: the code cells of a
notebook, exported with ``nbformat``, and in both cases only its definitions (a site must define
the flow, not run the notebook or the script: no ``print``, no training, no ``flow.run()``)."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
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
    ``%%time``/``%%timeit``/``%%capture``, whose body is kept), and then only the definitions
    (see :func:`definitions`: what runs things, from ``print`` to ``flow.run()``, is left out,
    and cells left with nothing are too). Removal is per statement (by AST); all else is kept as
    written. A cell that is not valid Python raises :class:`PackageError` naming it."""
    path = Path(notebook_path)
    cells = _read_notebook(path)
    parts: list[str] = []
    for number, cell in enumerate(cells, start=1):
        if cell.get("cell_type") != "code":
            continue
        text = _export_cell(str(cell.get("source", "")), number, path)
        if text.strip():
            parts.append(f"{_CELL}{number}\n{text}\n")
    code = "\n".join(parts)
    try:
        tree = ast.parse(code)
        compile(tree, str(path), "exec", dont_inherit=True)
    except SyntaxError as err:
        cell = _cell_at(code, err.lineno or 0)
        raise PackageError(f"the code exported from {path} does not compile ({err.msg}, in cell "
                           f"{cell}); a 'from __future__' import must be in the first code "
                           "cell") from None
    kept = definitions(code, tree, lambda line: f"{path.name}, cell {_cell_at(code, line)}")
    return _without_empty_cells(kept)


_CELL = "# %% cell "


def _without_empty_cells(code: str) -> str:
    """The exported code without cells that hold no code any more (comments do not count)."""
    pieces = re.split(rf"^{_CELL}(\d+)\n", code, flags=re.MULTILINE)
    parts = []
    for number, body in zip(pieces[1::2], pieces[2::2], strict=True):
        body = re.sub(r"\A(?:[ \t]*\n)+", "", body).rstrip()
        if any(line.strip() and not line.lstrip().startswith("#") for line in body.splitlines()):
            parts.append(f"{_CELL}{number}\n{body}\n")
    tidy = "\n".join(parts)
    # A cell line inside a string would have split the code wrongly: then it stays as it was.
    return tidy if ast.dump(ast.parse(tidy)) == ast.dump(ast.parse(code)) else code


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


def _export_cell(source: str, number: int, path: Path) -> str:
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
    text = re.sub(r"\A(?:[ \t]*\n)+", "", source).rstrip()
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
        if line.startswith(_CELL):
            number = line.removeprefix(_CELL)
    return number


# -- what the sites run: the definitions -------------------------------------------------------

def definitions(source: str, tree: ast.Module, locate: Callable[[int], str]) -> str:
    """``source`` (which ``tree`` was parsed from) as the sites run it: its definitions, and not
    the statements that run things. Kept as written: the module's docstring, imports, classes,
    functions (except those that build a runtime or run a flow, unless something kept uses
    them), and any other statement that binds or changes a name the kept code uses (``SCALE =
    2``, ``CONFIG["lr"] = 0.1``, ``REGISTRY.update(...)``), with the ``if``/``try`` around it.
    Dropped: the rest (``print(...)``, ``flow = Flow()``, ``flow.run()``, plotting, ``del``)
    and the body of ``if __name__ == "__main__":``. Code the sites would run that reads the
    command line, or that uses a name set only under that ``if``, raises :class:`PackageError`
    naming the place (``locate(line)``) and what to do instead."""
    plan = _Plan(tree)
    plan.check(source, locate)
    text = _Remover(source, plan.kept).run(tree)
    text = text.rstrip() + "\n" if text.strip() else ""  # no blank lines left at the end
    try:
        compile(text, "<definitions>", "exec", dont_inherit=True)
    except SyntaxError as err:  # a bug here, not the user's: say where it happened
        raise PackageError(f"keeping only the definitions of {locate(1)} made code that does "
                           f"not compile ({err.msg}, line {err.lineno}); please report it") \
            from None
    return text


_ARGV_PARSERS = frozenset({"parse_args", "parse_known_args", "parse_intermixed_args",
                           "parse_known_intermixed_args"})
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


@dataclass
class _Unit:
    """A module-level statement that is not an ``if``/``try`` (those go with what they hold)."""

    stmt: ast.stmt
    parents: tuple[ast.stmt, ...]  # the if/try statements around it
    touches: set[str] = field(default_factory=set)  # names it binds or changes
    loads: set[str] = field(default_factory=set)  # global names it reads


class _Plan:
    """Which module-level statements the sites run (see :func:`definitions`)."""

    def __init__(self, tree: ast.Module) -> None:
        self.units: list[_Unit] = []
        self.guarded: list[ast.stmt] = []  # bodies of `if __name__ == "__main__":`
        self._collect(tree.body, ())
        self.imported = {name for u in self.units for name in _imported(u.stmt)}
        runtimes = set(RUNTIME_CLASSES) | {
            alias.asname or alias.name for u in self.units if isinstance(u.stmt, ast.ImportFrom)
            for alias in u.stmt.names if alias.name in RUNTIME_CLASSES}
        self.kept: set[int] = set()
        needed: set[str] = set()
        candidates: list[_Unit] = []
        for unit in self.units:
            stmt = unit.stmt
            if isinstance(stmt, ast.Import | ast.ImportFrom) or (
                    stmt is tree.body[0] and _is_docstring(stmt)):
                self._keep(unit, needed)
            elif isinstance(stmt, _DEFS):
                unit.touches, unit.loads = {stmt.name}, _free_loads(stmt)
                if isinstance(stmt, ast.ClassDef) or not _runs_a_flow(stmt, runtimes):
                    self._keep(unit, needed)
                else:
                    candidates.append(unit)  # a driver (def main(): ...): only if it is used
            elif not isinstance(stmt, ast.Delete | ast.Global | ast.Nonlocal | ast.Pass):
                unit.touches, unit.loads = _touches(stmt, self.imported), _loads(stmt)
                candidates.append(unit)
        while True:  # what kept code uses is kept, and what that uses, ...
            newly = [u for u in candidates if u.touches & needed]
            if not newly:
                break
            for unit in newly:
                self._keep(unit, needed)
            candidates = [u for u in candidates if id(u.stmt) not in self.kept]

    def _collect(self, body: list[ast.stmt], parents: tuple[ast.stmt, ...]) -> None:
        for stmt in body:
            if _is_main_guard(stmt):
                assert isinstance(stmt, ast.If)
                self.guarded += stmt.body
                self._collect(stmt.orelse, (*parents, stmt))
            elif isinstance(stmt, ast.If | ast.Try) or type(stmt).__name__ == "TryStar":
                for child in child_bodies(stmt):
                    self._collect(child, (*parents, stmt))
            else:
                self.units.append(_Unit(stmt, parents))

    def _keep(self, unit: _Unit, needed: set[str]) -> None:
        self.kept.add(id(unit.stmt))
        needed |= unit.loads
        for parent in unit.parents:
            if id(parent) not in self.kept:
                self.kept.add(id(parent))
                needed |= {n for node in _tests(parent) for n in _loads(node)}

    def check(self, source: str, locate: Callable[[int], str]) -> None:
        """Refuse code the sites would run that reads the command line (theirs, not the
        submitter's) or uses a name set only when the script runs as a script."""
        kept = [u for u in self.units if id(u.stmt) in self.kept]
        at_import: list[ast.AST] = [node for u in kept for node in _at_definition(u.stmt)]
        at_import += [node for u in kept for parent in u.parents for node in _tests(parent)]
        defs = {u.stmt.name: u.stmt for u in kept if isinstance(u.stmt, _DEFS)}
        running: list[ast.stmt] = [d for d in defs.values() if isinstance(d, ast.ClassDef)]
        reach = {n for node in at_import for n in _loads(node)}
        reach |= {n for cls in running for n in _free_loads(cls)}
        todo = [name for name in reach if name in defs]
        while todo:  # functions the classes (flows, objects in the state) and imports call
            found = defs[todo.pop()]
            if found not in running:
                running.append(found)
                fresh = _free_loads(found) - reach
                reach |= fresh
                todo += [name for name in fresh if name in defs]
        sys_names = {a.asname or a.name for u in kept if isinstance(u.stmt, ast.Import)
                     for a in u.stmt.names if a.name == "sys"}
        argv_names = {a.asname or a.name for u in kept if isinstance(u.stmt, ast.ImportFrom)
                      and u.stmt.module == "sys" for a in u.stmt.names if a.name == "argv"}
        for node in [*at_import, *running]:
            for found_node in ast.walk(node):
                if _reads_command_line(found_node, sys_names, argv_names):
                    text = ast.get_source_segment(source, found_node) or "sys.argv"
                    raise PackageError(
                        f"{locate(getattr(found_node, 'lineno', 1))}: {text} reads the command "
                        "line, and the sites would run it with theirs (another value, without a "
                        "word). Read it where the flow is run, and pass the value to the flow's "
                        "constructor: constructor arguments travel with the flow")
        bound = {n for u in kept for n in u.touches} | self.imported
        for stmt in self.guarded:
            missing = sorted((_touches(stmt, self.imported) & reach) - bound)
            if missing:
                raise PackageError(
                    f"{locate(stmt.lineno)}: {', '.join(missing)} "
                    f"{'is' if len(missing) == 1 else 'are'} set under `if __name__ == "
                    "\"__main__\":`, which the sites do not run, but the flow uses "
                    f"{'it' if len(missing) == 1 else 'them'}; set "
                    f"{'it' if len(missing) == 1 else 'them'} at module level, or pass the "
                    "value to the flow's constructor")


def _is_main_guard(stmt: ast.stmt) -> bool:
    if not isinstance(stmt, ast.If) or not isinstance(stmt.test, ast.Compare):
        return False
    test = stmt.test
    if len(test.ops) != 1 or not isinstance(test.ops[0], ast.Eq):
        return False
    sides = [test.left, test.comparators[0]]
    return any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides) and any(
        isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and \
        isinstance(stmt.value.value, str)


def _imported(stmt: ast.stmt) -> set[str]:
    if isinstance(stmt, ast.Import):
        return {a.asname or a.name.split(".")[0] for a in stmt.names}
    if isinstance(stmt, ast.ImportFrom):
        return {a.asname or a.name for a in stmt.names if a.name != "*"}
    return set()


def _tests(stmt: ast.stmt) -> list[ast.expr]:
    """What an ``if``/``try`` evaluates besides its bodies."""
    if isinstance(stmt, ast.If):
        return [stmt.test]
    return [h.type for h in getattr(stmt, "handlers", ()) if h.type is not None]


def _loads(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _free_loads(definition: ast.stmt) -> set[str]:
    """Names a class or function reads that it does not bind itself (its globals, roughly)."""
    local: set[str] = set()
    for node in ast.walk(definition):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            local.add(node.id)
        elif isinstance(node, ast.arg):
            local.add(node.arg)
        elif isinstance(node, _DEFS) and node is not definition:
            local.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            local |= _imported(node)
    return _loads(definition) - local


def _root(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute | ast.Subscript):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _touches(stmt: ast.stmt, imported: set[str]) -> set[str]:
    """Names ``stmt`` binds or changes: assigned, or an item, attribute or method call of (not
    of a module: ``np.random.seed(0)`` changes no name of the script)."""
    names: set[str] = set()
    for node in ast.walk(stmt):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute | ast.Subscript) and \
                isinstance(node.ctx, ast.Store | ast.Del):
            names.add(_root(node) or "")
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and \
                isinstance(node.value.func, ast.Attribute):
            root = _root(node.value.func)
            if root and root not in imported:
                names.add(root)
        elif isinstance(node, _DEFS):
            names.add(node.name)
        else:
            names |= _imported(node) if isinstance(node, ast.stmt) else set()
    names.discard("")
    return names


def _runs_a_flow(function: ast.stmt, runtimes: set[str]) -> bool:
    """Whether a function builds a runtime or runs a flow (a script's ``main``)."""
    for node in ast.walk(function):
        if isinstance(node, ast.Call):
            func = node.func
            callee = func.id if isinstance(func, ast.Name) else \
                func.attr if isinstance(func, ast.Attribute) else None
            if callee in runtimes or (callee == "run" and isinstance(func, ast.Attribute) and
                                      not node.args and not node.keywords):
                return True
        elif isinstance(node, ast.Attribute) and node.attr == "runtime" and \
                isinstance(node.ctx, ast.Store):
            return True
    return False


def _at_definition(stmt: ast.stmt) -> list[ast.AST]:
    """What of a kept statement runs when the module is imported: all of it, except the bodies
    of functions (a class's body runs, its methods' bodies do not)."""
    if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
        args = stmt.args
        return [*stmt.decorator_list, *args.defaults, *(d for d in args.kw_defaults if d)]
    if isinstance(stmt, ast.ClassDef):
        return [*stmt.decorator_list, *stmt.bases, *stmt.keywords,
                *(node for child in stmt.body for node in _at_definition(child))]
    return [stmt]


def _reads_command_line(node: ast.AST, sys_names: set[str], argv_names: set[str]) -> bool:
    if isinstance(node, ast.Attribute) and node.attr == "argv":
        return isinstance(node.value, ast.Name) and node.value.id in sys_names
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
        return node.id in argv_names
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        # argparse reads sys.argv when given no arguments
        return node.func.attr in _ARGV_PARSERS and not node.args and \
            not any(k.arg == "args" for k in node.keywords)
    return False


class _Remover:
    """Removes the statements not in ``kept`` from the source, keeping the rest as written."""

    def __init__(self, source: str, kept: set[int]) -> None:
        self.source = source
        self.lines = re.findall(r"[^\n]*\n|[^\n]+\Z", source)  # as the tokenizer counts lines
        self.kept = kept
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

    def _visit(self, stmt: ast.stmt) -> bool:
        """Whether ``stmt`` goes; a kept if/try keeps only what it holds that is kept."""
        if id(stmt) not in self.kept:
            return True
        if isinstance(stmt, ast.If | ast.Try) or type(stmt).__name__ == "TryStar":
            for body in child_bodies(stmt):
                self._body(body, nested=True)
        return False

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


def child_bodies(stmt: ast.stmt) -> list[list[ast.stmt]]:
    """The statement lists nested in a compound statement (not in function or class bodies)."""
    if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return []
    bodies: list[list[ast.stmt]] = [getattr(stmt, name) for name in
                                    ("body", "orelse", "finalbody") if getattr(stmt, name, None)]
    bodies += [h.body for h in getattr(stmt, "handlers", ())]
    bodies += [case.body for case in getattr(stmt, "cases", ())]
    return bodies
