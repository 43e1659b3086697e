"""Experiment packages: what a user submits to a federation, and what each site approves.

A package holds the flow's source (the exported notebook, or the module that defines the flow),
the requirements read from its imports, the flow's constructor state (opaque bytes, encoded by the
caller) and a little metadata. Its canonical encoding is hashed into a sha256 ``digest``:
reviewers approve a digest, and a site loads only bytes whose sha256 is the digest it approved.

Encoding, version 1 (no pickle; the digest is the sha256 of exactly these bytes)::

    b"fedloom-package/1\\n" + HEADER + b"\\n" + file payloads + initial state

``HEADER`` is canonical JSON (sorted keys, no whitespace, ASCII only) with the text fields, the
requirements (sorted), the metadata, and for every file (sorted by path) and for the initial state
its size and sha256. The payloads follow in the header's order: each file as UTF-8, then the
initial state. ``from_bytes`` accepts only this canonical form, so a package has one encoding and
one digest.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import logging
import os
import platform
import re
import sys
import traceback
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

from fedloom.errors import DigestMismatchError, PackageError
from fedloom.federation.notebook import child_bodies, definitions, export_notebook
from fedloom.spec.flowspec import FLSpec
from fedloom.spec.graph import NameList, _is_next_call, _read_next_call

log = logging.getLogger(__name__)

MAGIC = b"fedloom-package/1\n"
FORMAT_VERSION = 1
MODULE_PREFIX = "fedloom_experiment_"
NOTEBOOK_ENTRY = "experiment.py"
_HEADER_KEYS = frozenset({"format", "flow_class", "module", "entry", "files", "requirements",
                          "metadata", "initial_state"})
_SHA256 = re.compile(r"[0-9a-f]{64}")


# -- the package -------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class ExperimentPackage:
    """A flow's sources, requirements, initial state and metadata; immutable, and identified by
    :attr:`digest`. Mappings are frozen and sorted; ``requirements`` are sorted and unique."""

    flow_class: str
    module: str
    entry: str
    files: Mapping[str, str]
    requirements: tuple[str, ...]
    initial_state: bytes
    metadata: Mapping[str, str]

    def __post_init__(self) -> None:
        _check_identifier(self.flow_class, "flow_class")
        _check_identifier(self.module, "module")
        if not isinstance(self.files, Mapping) or not self.files:
            raise PackageError("a package needs at least one file (files={path: source})")
        for path, text in self.files.items():
            _check_relative_path(path)
            if not isinstance(text, str):
                raise PackageError(f"file {path!r} must be source text (str), got "
                                   f"{type(text).__name__}")
        if not isinstance(self.entry, str) or self.entry not in self.files or \
                not self.entry.endswith(".py"):
            raise PackageError(f"entry {self.entry!r} must be one of the package's .py files "
                               f"{sorted(self.files)}")
        if isinstance(self.requirements, str) or \
                not all(isinstance(r, str) and r for r in self.requirements):
            raise PackageError("requirements must be a sequence of non-empty strings")
        if not isinstance(self.initial_state, bytes | bytearray | memoryview):
            raise PackageError(f"initial_state must be bytes, got "
                               f"{type(self.initial_state).__name__}")
        if not isinstance(self.metadata, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.metadata.items()):
            raise PackageError("metadata must map strings to strings")
        freeze = object.__setattr__
        freeze(self, "files", MappingProxyType(dict(sorted(self.files.items()))))
        freeze(self, "metadata", MappingProxyType(dict(sorted(self.metadata.items()))))
        freeze(self, "requirements", tuple(sorted(set(self.requirements))))
        freeze(self, "initial_state", bytes(self.initial_state))

    @cached_property
    def _payloads(self) -> tuple[bytes, ...]:
        try:
            return tuple(text.encode("utf-8") for text in self.files.values())
        except UnicodeEncodeError as err:
            raise PackageError(f"a file of the package is not encodable as UTF-8: {err}") from None

    @cached_property
    def _blob_digests(self) -> tuple[str, ...]:
        """sha256 of each file, then of the initial state (from_bytes knows them already)."""
        return (*(_sha256(data) for data in self._payloads), _sha256(self.initial_state))

    @cached_property
    def _header(self) -> bytes:
        *file_digests, state_digest = self._blob_digests
        header = {
            "format": FORMAT_VERSION,
            "flow_class": self.flow_class,
            "module": self.module,
            "entry": self.entry,
            "files": [{"path": path, "size": len(data), "sha256": digest}
                      for path, data, digest in zip(self.files, self._payloads, file_digests,
                                                    strict=True)],
            "requirements": list(self.requirements),
            "metadata": dict(self.metadata),
            "initial_state": {"size": len(self.initial_state), "sha256": state_digest},
        }
        return _canonical_json(header)

    @cached_property
    def digest(self) -> str:
        """sha256 (hex) of :meth:`to_bytes`: identifies this package everywhere."""
        h = hashlib.sha256(MAGIC)
        h.update(self._header)
        h.update(b"\n")
        for data in self._payloads:
            h.update(data)
        h.update(self.initial_state)
        return h.hexdigest()

    def to_bytes(self) -> bytes:
        """The canonical encoding (see the module docstring)."""
        return b"".join((MAGIC, self._header, b"\n", *self._payloads, self.initial_state))

    @classmethod
    def from_verified_bytes(cls, data: bytes | memoryview, digest: str) -> ExperimentPackage:
        """Decode bytes already checked against ``digest`` by the caller (e.g. the node that
        approved them, handing them to its experiment process): not hashed again."""
        return cls._decode(bytes(data), digest, verify_parts=False)

    @classmethod
    def from_bytes(cls, data: bytes, expected_digest: str | None = None) -> ExperimentPackage:
        """Decode :meth:`to_bytes`. With ``expected_digest`` the bytes are checked first, and a
        mismatch raises :class:`DigestMismatchError`; malformed data raises
        :class:`PackageError`."""
        data = bytes(data)
        if expected_digest is not None:
            check_digest(data, expected_digest)
        # The header's digest of every part is checked too: a package has exactly one encoding.
        return cls._decode(data, expected_digest, verify_parts=True)

    @classmethod
    def _decode(cls, data: bytes, verified_digest: str | None,
                verify_parts: bool = False) -> ExperimentPackage:
        # A large initial state makes every sha256 pass count: each part is hashed at most once
        # (and not at all in a process handed bytes its node verified).
        if not data.startswith(MAGIC):
            raise PackageError("not a fedloom experiment package (it does not start with "
                               f"{MAGIC.decode().strip()!r})")
        end = data.find(b"\n", len(MAGIC))
        if end < 0:
            raise PackageError("malformed experiment package: the header is not terminated")
        raw_header = data[len(MAGIC):end]
        try:
            header = json.loads(raw_header.decode("ascii"))
        except (UnicodeDecodeError, ValueError) as err:
            raise PackageError(f"malformed experiment package: unreadable header ({err})") from None
        package = _from_header(header, memoryview(data)[end + 1:], verify_parts=verify_parts)
        if verified_digest is not None:
            package.__dict__["digest"] = verified_digest.strip().lower()
        if package._header != raw_header:
            raise PackageError("malformed experiment package: the header is not in canonical form")
        return package

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExperimentPackage):
            return NotImplemented
        return self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return (f"ExperimentPackage({self.flow_class} from {self.entry}, "
                f"digest={self.digest[:12]}, {len(self.initial_state)} bytes of state)")


def check_digest(data: bytes, expected_digest: str) -> None:
    """Raise :class:`DigestMismatchError` unless ``sha256(data)`` is ``expected_digest``."""
    expected = str(expected_digest).strip().lower()
    if not _SHA256.fullmatch(expected):
        raise PackageError(f"{expected_digest!r} is not a sha256 digest (64 hex digits)")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise DigestMismatchError(
            f"digest mismatch: the package was changed after it was approved/submitted "
            f"(expected sha256 {expected}, got {actual}); refusing to use it")


def _from_header(header: Any, payload: memoryview, verify_parts: bool = True
                 ) -> ExperimentPackage:
    def bad(why: str) -> PackageError:
        return PackageError(f"malformed experiment package: {why}")

    if not isinstance(header, dict) or set(header) != _HEADER_KEYS:
        raise bad(f"the header must have exactly the keys {sorted(_HEADER_KEYS)}")
    if header["format"] != FORMAT_VERSION:
        raise bad(f"unsupported format {header['format']!r} (this fedloom reads format "
                  f"{FORMAT_VERSION})")
    entries = header["files"]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise bad("'files' must be a list of {path, size, sha256}")
    blobs = [*entries, header["initial_state"]]
    chunks: list[bytes] = []
    offset = 0
    for blob in blobs:
        if not isinstance(blob, dict) or set(blob) - {"path"} != {"size", "sha256"} or \
                not isinstance(blob["size"], int) or blob["size"] < 0:
            raise bad(f"bad payload description {blob!r}")
        chunk = bytes(payload[offset:offset + blob["size"]])
        offset += blob["size"]
        if len(chunk) != blob["size"]:
            raise bad("the payloads are shorter than the header says (truncated?)")
        if verify_parts and _sha256(chunk) != blob["sha256"]:
            raise bad(f"the content of {blob.get('path', 'the initial state')!r} does not "
                      "match its sha256 in the header")
        chunks.append(chunk)
    if offset != len(payload):
        raise bad(f"{len(payload) - offset} unexpected bytes after the payloads")
    files: dict[str, str] = {}
    for entry, chunk in zip(entries, chunks, strict=False):
        try:
            files[str(entry["path"])] = chunk.decode("utf-8")
        except (KeyError, UnicodeDecodeError) as err:
            raise bad(f"bad file entry {entry!r}: {err}") from None
    requirements = header["requirements"]
    if not isinstance(requirements, list):
        raise bad("'requirements' must be a list")
    try:
        package = ExperimentPackage(
            flow_class=header["flow_class"], module=header["module"], entry=header["entry"],
            files=files, requirements=tuple(requirements), initial_state=chunks[-1],
            metadata=header["metadata"])
    except PackageError as err:
        raise bad(str(err)) from None
    if list(package.files) == [str(e["path"]) for e in entries]:
        # verified above, or (from_verified_bytes) by the node that hands these bytes over;
        # out-of-order entries keep the digests to be computed: the canonical check refuses them
        package.__dict__["_blob_digests"] = tuple(str(b["sha256"]) for b in blobs)
    return package


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_identifier(value: object, what: str) -> None:
    if not isinstance(value, str) or not value.isidentifier():
        raise PackageError(f"{what} must be a Python identifier, got {value!r}")


def _check_relative_path(path: object) -> None:
    parts = path.split("/") if isinstance(path, str) else []
    if not parts or "\\" in str(path) or any(p in ("", ".", "..") for p in parts) or \
            ":" in parts[0]:
        raise PackageError(f"file paths must be relative POSIX paths inside the package "
                           f"(like 'experiment.py'), got {path!r}")


def sources_digest(flow_class: str, entry: str, files: Mapping[str, str]) -> str:
    """sha256 of the code alone (class, entry and files; not state, requirements or metadata).
    The package's module name is derived from it, so it is known before the state is encoded."""
    body = {"flow_class": flow_class, "entry": entry,
            "files": {path: _sha256(text.encode("utf-8")) for path, text in files.items()}}
    return _sha256(_canonical_json(body))


# -- building a package ------------------------------------------------------------------------

@dataclass(frozen=True)
class FlowSources:
    """The code part of a package, as :func:`collect_sources` found it."""

    flow_class: str
    module: str  # the name the sources are imported as at the sites
    entry: str
    files: Mapping[str, str]
    source: str  # "notebook:<file name>" or "module:<path>"
    original_module: str  # the flow class's module here (often "__main__")


def collect_sources(flow_cls: type, notebook_path: str | Path | None = None) -> FlowSources:
    """The sources of ``flow_cls``: the exported notebook, or else the file of its module."""
    if not (isinstance(flow_cls, type) and issubclass(flow_cls, FLSpec)):
        raise PackageError(f"a flow class (a subclass of FLSpec) is needed, got {flow_cls!r}")
    name = flow_cls.__name__
    if notebook_path is not None:
        path = Path(notebook_path)
        entry, text, source = NOTEBOOK_ENTRY, export_notebook(path), f"notebook:{path.name}"
        if name not in _module_level_classes(ast.parse(text)):
            raise PackageError(
                f"notebook {path} does not define the flow class {name} in a code cell; define "
                f"it in the notebook, or leave out notebook_path= to package the module "
                f"{flow_cls.__module__!r} that defines it")
    else:
        file = _module_file(flow_cls)
        entry, text, source = file.name, _read_module(flow_cls, file), f"module:{file}"
    files = {entry: text}
    module = MODULE_PREFIX + sources_digest(name, entry, files)[:12]
    return FlowSources(name, module, entry, MappingProxyType(files), source, flow_cls.__module__)


def package_flow(flow_cls: type, initial_state: bytes, *,
                 notebook_path: str | Path | None = None, created_by: str = "",
                 sources: FlowSources | None = None,
                 settings: Mapping[str, str] | None = None) -> ExperimentPackage:
    """Package ``flow_cls`` with ``initial_state`` (the encoded constructor state). The sources
    are the notebook at ``notebook_path`` (its exported code cells), or else the module file that
    defines the flow. ``sources`` reuses what :func:`collect_sources` returned. ``settings``
    (e.g. the straggler policy) go into the metadata, so the digest covers them and reviewers
    see them."""
    if sources is None:
        sources = collect_sources(flow_cls, notebook_path)
    requirements, unresolved = find_requirements(sources.files.values())
    from fedloom import __version__

    metadata = {"created_by": str(created_by), "python": platform.python_version(),
                **(settings or {}), "fedloom": __version__, "source": sources.source,
                "flow_module": sources.original_module}
    if unresolved:
        log.warning("%s imports %s, which %s not installed distributions and will not be in "
                    "the package; the sites must have them", sources.entry,
                    ", ".join(unresolved), "is" if len(unresolved) == 1 else "are")
        metadata["unresolved_imports"] = ",".join(unresolved)
    return ExperimentPackage(
        flow_class=sources.flow_class, module=sources.module, entry=sources.entry,
        files=sources.files, requirements=requirements, initial_state=initial_state,
        metadata=metadata)


def _module_file(flow_cls: type) -> Path:
    name, module = flow_cls.__name__, flow_cls.__module__
    if flow_cls.__qualname__ != name:
        raise PackageError(f"flow class {flow_cls.__qualname__} is not defined at the top level "
                           f"of its module; define it at module level so it can be packaged")
    if module == "__main__":
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        if not main_file or not Path(main_file).is_file():
            raise PackageError(
                f"{name} is defined in an interactive session (notebook or REPL) without a "
                f"source file; pass notebook_path='path/to/notebook.ipynb' to FederatedRuntime "
                f"(or package_flow) so the notebook's code cells can be exported")
        return Path(main_file).resolve()
    try:
        file = inspect.getsourcefile(flow_cls)
    except (TypeError, OSError):
        file = None
    if not file or not Path(file).is_file() or not file.endswith(".py"):
        raise PackageError(f"the source file of module {module!r} (which defines {name}) is not "
                           "available, so the flow cannot be packaged from it; pass "
                           "notebook_path=... or define the flow in a .py file")
    return Path(file).resolve()


def _read_module(flow_cls: type, file: Path) -> str:
    try:
        text = file.read_text(encoding="utf-8")
        tree = ast.parse(text, filename=str(file))
    except (OSError, UnicodeDecodeError, SyntaxError) as err:
        raise PackageError(f"cannot read the flow's module {file}: {err}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise PackageError(
                f"{file}:{node.lineno} uses a relative import; the package holds only this file, "
                f"so use absolute imports of installed packages")
    if flow_cls.__name__ not in _module_level_classes(tree):
        raise PackageError(f"{file} does not define {flow_cls.__name__} at module level")
    if flow_cls.__module__ == "__main__":
        # A script: the sites run its definitions, not what it does when it runs (as for a
        # notebook); an imported module is imported there as here, whole.
        text = definitions(text, tree, lambda line: f"{file}:{line}")
        if flow_cls.__name__ not in _module_level_classes(ast.parse(text)):
            raise PackageError(f"{file} defines {flow_cls.__name__} under `if __name__ == "
                               "\"__main__\":`, which the sites do not run; define it at module "
                               "level")
    return text


def _module_level_classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    """Classes a module defines when it runs (in compound statements too, not in functions)."""
    found: dict[str, ast.ClassDef] = {}
    for stmt in _module_level_statements(tree.body):
        if isinstance(stmt, ast.ClassDef):
            found.setdefault(stmt.name, stmt)
    return found


def _module_level_statements(body: Sequence[ast.stmt]) -> Iterator[ast.stmt]:
    for stmt in body:
        yield stmt
        for child in child_bodies(stmt):
            yield from _module_level_statements(child)


# -- requirements ------------------------------------------------------------------------------

_dist_cache: dict[str, list[str]] = {}


def find_requirements(sources: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(requirements, unresolved)`` for the top-level imports of ``sources``: ``name==version``
    of each installed distribution they import (sorted), and the imported top-level names that are
    neither standard library nor installed distributions (local modules, missing packages)."""
    imported: set[str] = set()
    for text in sources:
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module)
    stdlib = set(sys.stdlib_module_names) | set(sys.builtin_module_names)
    requirements: set[str] = set()
    unresolved: set[str] = set()
    refreshed = False
    for dotted in sorted(imported):
        top = dotted.split(".")[0]
        if top in stdlib:
            continue
        if top not in _dist_cache and not refreshed:  # installed since the last look?
            _dist_cache.clear()
            _dist_cache.update(importlib.metadata.packages_distributions())
            refreshed = True
        dists = _narrow(dotted, sorted(set(_dist_cache.get(top, ()))))
        if not dists:
            unresolved.add(top)
        for dist in dists:
            try:
                requirements.add(f"{dist}=={importlib.metadata.version(dist)}")
            except importlib.metadata.PackageNotFoundError:
                requirements.add(dist)
    return tuple(sorted(requirements)), tuple(sorted(unresolved))


def _narrow(dotted: str, dists: list[str]) -> list[str]:
    """For a namespace package (``google.protobuf``), the distributions with that subpackage."""
    parts = dotted.split(".")
    if len(dists) < 2 or len(parts) < 2:
        return dists
    prefix = "/".join(parts[:2])
    narrowed = []
    for dist in dists:
        try:
            paths = importlib.metadata.distribution(dist).files or []
        except importlib.metadata.PackageNotFoundError:
            continue
        if any(str(p).startswith((prefix + "/", prefix + ".")) for p in paths):
            narrowed.append(dist)
    return narrowed or dists


# -- loading at a site -------------------------------------------------------------------------

def load_package(package: ExperimentPackage, workdir: Path) -> type:
    """Write the files into ``workdir/<digest12>/``, import the entry module as
    ``package.module`` (the only name it takes in ``sys.modules``) and return the flow class.
    A module already loaded from the same code is reused."""
    root = Path(workdir) / package.digest[:12]
    _write_files(root, package.files)
    module = _import_entry(package, root / package.entry)
    flow_cls = getattr(module, package.flow_class, None)
    if not (isinstance(flow_cls, type) and issubclass(flow_cls, FLSpec)):
        flows = sorted(n for n, v in vars(module).items()
                       if isinstance(v, type) and issubclass(v, FLSpec) and v is not FLSpec)
        raise PackageError(f"package {package.digest[:12]} ({package.entry}) does not define "
                           f"the flow class {package.flow_class}; its flow classes: {flows}")
    return flow_cls


def _write_files(root: Path, files: Mapping[str, str]) -> None:
    for rel, text in files.items():
        _check_relative_path(rel)
        target = root.joinpath(*rel.split("/"))
        data = text.encode("utf-8")
        if target.is_file() and target.read_bytes() == data:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        temp.write_bytes(data)
        os.replace(temp, target)  # atomic: a concurrent loader never sees half a file


def _import_entry(package: ExperimentPackage, path: Path) -> ModuleType:
    name = package.module
    marker = sources_digest(package.flow_class, package.entry, package.files)
    existing = sys.modules.get(name)
    if existing is not None:
        if getattr(existing, "__fedloom_sources__", None) == marker:
            return existing
        raise PackageError(f"module name {name!r} is already used in this process by other "
                           f"code; cannot load package {package.digest[:12]} under it")
    if importlib.util.find_spec(name) is not None:
        raise PackageError(f"package module name {name!r} would shadow an importable module")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PackageError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as err:
        sys.modules.pop(name, None)
        raise PackageError(
            f"importing package {package.digest[:12]} ({package.entry} as {name}) failed with "
            f"{type(err).__name__}: {err}\n\n{_user_traceback(err, path)}") from err
    module.__fedloom_sources__ = marker  # type: ignore[attr-defined]
    return module


def _user_traceback(err: BaseException, path: Path) -> str:
    """The traceback from the package's own frames on (the import machinery left out)."""
    tb = err.__traceback__
    while tb is not None and Path(tb.tb_frame.f_code.co_filename) != path:
        tb = tb.tb_next
    lines = traceback.format_exception(type(err), err, tb or err.__traceback__)
    return "".join(lines).rstrip()


# -- what a reviewer sees ----------------------------------------------------------------------

def describe_package(package: ExperimentPackage) -> dict[str, Any]:
    """A JSON-serialisable summary for reviewers, read from the source without running it:
    digest, flow class, steps (placement), transitions (foreach/include/exclude), files (line
    counts), requirements, initial state size, metadata and anything that looked wrong."""
    warnings: list[str] = []
    steps, transitions = _static_flow(package, warnings)
    files = [{"path": path, "lines": text.count("\n") + (not text.endswith("\n") and bool(text)),
              "bytes": len(text.encode("utf-8")), "sha256": _sha256(text.encode("utf-8"))}
             for path, text in package.files.items()]
    return {
        "digest": package.digest,
        "flow_class": package.flow_class,
        "module": package.module,
        "entry": package.entry,
        "source": package.metadata.get("source", ""),
        "steps": steps,
        "transitions": transitions,
        "files": files,
        "requirements": list(package.requirements),
        "initial_state": {"bytes": len(package.initial_state),
                          "sha256": _sha256(package.initial_state)},
        "metadata": dict(package.metadata),
        "warnings": warnings,
    }


def _static_flow(package: ExperimentPackage,
                 warnings: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    try:
        tree = ast.parse(package.files[package.entry])
    except SyntaxError as err:
        warnings.append(f"{package.entry} is not valid Python: {err}")
        return [], []
    methods = _flow_methods(_module_level_classes(tree), package.flow_class, warnings)
    steps: list[dict[str, Any]] = []
    transitions: list[dict[str, Any]] = []
    for name, fdef in methods.items():
        placement = _placement(fdef)
        if placement is None:
            continue
        role, resources = placement
        params = [a.arg for a in fdef.args.args]
        steps.append({"name": name, "placement": role, "resources": resources,
                      "line": fdef.lineno, "join": role == "aggregator" and "inputs" in params})
        self_name = params[0] if params else "self"
        calls = [_read_next_call(n, self_name, 0) for n in ast.walk(fdef)
                 if _is_next_call(n, self_name)]
        for call in sorted(calls, key=lambda c: c.line):
            transitions.append({"from": name, "to": call.target or call.target_text,
                                "line": call.line, "foreach": call.foreach_text,
                                "include": _names(call.include),
                                "exclude": _names(call.exclude)})
    rank = {"start": 0, "end": 2}
    steps.sort(key=lambda s: (rank.get(s["name"], 1), s["line"]))
    if not steps:
        warnings.append(f"no @aggregator/@collaborator steps of {package.flow_class} were found "
                        f"in {package.entry}")
    return steps, transitions


def _flow_methods(classes: Mapping[str, ast.ClassDef], name: str,
                  warnings: list[str]) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    """Methods of class ``name`` and its bases in the same file (the most derived wins)."""
    if name not in classes:
        warnings.append(f"class {name} is not defined at module level of the entry file")
        return {}
    order: list[ast.ClassDef] = []
    todo = [name]
    while todo:
        cls = classes[todo.pop(0)]
        if cls in order:
            continue
        order.append(cls)
        for base in cls.bases:
            base_name = base.id if isinstance(base, ast.Name) else \
                base.attr if isinstance(base, ast.Attribute) else ast.unparse(base)
            if base_name in classes:
                todo.append(base_name)
            elif base_name != "FLSpec":
                warnings.append(f"{cls.name} derives from {ast.unparse(base)}, which is not in "
                                "the package; its steps are not shown")
    methods: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    for cls in order:
        for stmt in cls.body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                methods.setdefault(stmt.name, stmt)
    return methods


def _placement(fdef: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[str, dict[str, str]] | None:
    for decorator in fdef.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        role = target.id if isinstance(target, ast.Name) else \
            target.attr if isinstance(target, ast.Attribute) else None
        if role in ("aggregator", "collaborator"):
            resources = {kw.arg or "**": ast.unparse(kw.value) for kw in
                         getattr(decorator, "keywords", ())}
            return role, resources
    return None


def _names(value: NameList | None) -> list[str] | str | None:
    if value is None:
        return None
    return list(value.names) if value.names is not None else value.text
