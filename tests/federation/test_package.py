"""Experiment packages: notebook export, packaging a module, canonical bytes and digest,
loading at a site, and what a reviewer is shown."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

import fedloom
from fedloom import Aggregator, Collaborator, FLSpec, LocalRuntime
from fedloom.errors import FedloomError
from fedloom.federation.package import (
    MAGIC,
    MODULE_PREFIX,
    DigestMismatchError,
    ExperimentPackage,
    PackageError,
    collect_sources,
    describe_package,
    export_notebook,
    load_package,
    package_flow,
)
from fedloom.federation.review.desk import Plan

FLOW_SOURCE = textwrap.dedent('''\
    """A tiny flow for packaging tests."""

    import numpy as np

    from fedloom import FLSpec, aggregator, collaborator

    VALUE = {value}


    class TinyFlow(FLSpec):
        def __init__(self, model=None, rounds=1, **kwargs):
            super().__init__(**kwargs)
            self.model = np.zeros(2) if model is None else model
            self.rounds = rounds

        @aggregator
        def start(self):
            self.collaborators = self.runtime.collaborators
            self.private = 1
            self.next(self.train, foreach="collaborators", exclude=["private"])

        @collaborator(num_gpus=0)
        def train(self):
            self.model = self.model + VALUE
            self.next(self.join)

        @aggregator
        def join(self, inputs):
            self.model = sum(i.model for i in inputs) / len(inputs)
            self.next(self.end, include=["model"])

        @aggregator
        def end(self):
            pass
''')


@pytest.fixture(autouse=True)
def _forget_loaded_modules() -> Iterator[None]:
    """Packages a test loads (and modules it imports from tmp_path) leave with it."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith((MODULE_PREFIX, "pkgtest_")):
            del sys.modules[name]


def import_file(path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def tiny_module(tmp_path: Path, name: str = "pkgtest_flows", value: int = 1) -> type[FLSpec]:
    path = tmp_path / f"{name}.py"
    path.write_text(FLOW_SOURCE.format(value=value))
    flow_cls: type[FLSpec] = import_file(path).TinyFlow
    return flow_cls


@pytest.fixture
def tiny_flow(tmp_path: Path) -> type[FLSpec]:
    return tiny_module(tmp_path)


@pytest.fixture
def package(tiny_flow: type[FLSpec]) -> ExperimentPackage:
    return package_flow(tiny_flow, b"\x00state\xff", created_by="alice")


def run_locally(flow_cls: type[FLSpec]) -> FLSpec:
    flow = flow_cls(model=np.ones(2))
    flow.runtime = LocalRuntime(aggregator=Aggregator(),
                                collaborators=[Collaborator(name="a"), Collaborator(name="b")])
    flow.run()
    return flow


# -- notebook export ---------------------------------------------------------------------------

NOTEBOOK_CELLS = [
    ("code", "import numpy as np\nimport fedloom\nfrom fedloom import FLSpec, aggregator\n"
             "from fedloom import LocalRuntime as LR"),
    ("markdown", "# A flow\nflow.run() here is prose"),
    ("code", "%matplotlib inline"),
    ("code", "!pip install x\nimport os  # kept"),
    ("code", "class NbFlow(FLSpec):\n"
             "    @aggregator\n"
             "    def start(self):\n"
             "        self.next(self.end)\n"
             "\n"
             "    @aggregator\n"
             "    def end(self):\n"
             "        pass"),
    ("code", "SCALE = 2\n\ndef helper(x):\n    return x * SCALE  # unrelated code stays"),
    ("code", "director = {'director_node_fqdn': 'localhost', 'director_port': 50050}\n"
             "federated_runtime = fedloom.FederatedRuntime(\n"
             "    collaborators=['a'], director=director, notebook_path='x.ipynb', tls=False)\n"
             "local = LR()\n"
             "envoys = federated_runtime.get_envoys()\n"
             "flow = NbFlow()\n"
             "flow.runtime = federated_runtime  # deploy\n"
             "flow.run()\n"
             "total = helper(3); flow.run(); other = 4\n"
             "print(flow.runtime)"),
    ("code", "%%bash\necho not python"),
    ("code", "%%time\nquick = 1\nprint(flow.model)"),
    ("code", "if __name__ == '__main__':\n    flow.run()\nelse: flow.run()\n"
             "print(envoys)\nprint(total)"),
    ("code", "flow.run()"),
]

EXPECTED_EXPORT = '''\
# %% cell 1
import numpy as np
import fedloom
from fedloom import FLSpec, aggregator
from fedloom import LocalRuntime as LR

# %% cell 4
import os  # kept

# %% cell 5
class NbFlow(FLSpec):
    @aggregator
    def start(self):
        self.next(self.end)

    @aggregator
    def end(self):
        pass

# %% cell 6
SCALE = 2

def helper(x):
    return x * SCALE  # unrelated code stays
'''


def write_notebook(path: Path, cells: list[tuple[str, str]]) -> Path:
    nb = new_notebook(cells=[new_code_cell(src) if kind == "code" else new_markdown_cell(src)
                             for kind, src in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python",
                                 "display_name": "Python 3"}
    nbformat.write(nb, str(path))
    return path


def test_export_keeps_code_and_drops_magics_shell_runtime_and_run(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "flow.ipynb", NOTEBOOK_CELLS)
    assert export_notebook(notebook) == EXPECTED_EXPORT


def test_export_of_a_notebook_runs_as_a_module(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "flow.ipynb", NOTEBOOK_CELLS)
    pkg = package_flow(_class_named("NbFlow"), b"", notebook_path=notebook)
    assert pkg.entry == "experiment.py"
    assert pkg.files == {"experiment.py": EXPECTED_EXPORT}
    assert pkg.metadata["source"] == "notebook:flow.ipynb"
    flow_cls = load_package(pkg, tmp_path / "site")
    assert flow_cls.__name__ == "NbFlow" and fedloom.check_flow(flow_cls) == []


def _class_named(name: str) -> type[FLSpec]:
    # A class as a notebook kernel would define it (packaging only needs its name).
    return type(name, (FLSpec,), {"__module__": "__main__"})


def test_export_names_the_cell_that_does_not_parse(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "bad.ipynb", [
        ("code", "x = 1"), ("markdown", "text"), ("code", "def broken(:\n    pass")])
    with pytest.raises(PackageError, match=r"cell 3 of .*bad\.ipynb is not valid Python"):
        export_notebook(notebook)


def test_export_refuses_top_level_await_naming_the_cell(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "aw.ipynb", [("code", "import asyncio"),
                                                      ("code", "await asyncio.sleep(0)")])
    with pytest.raises(PackageError, match="cell 2"):
        export_notebook(notebook)


def test_export_keeps_magic_looking_lines_inside_strings(tmp_path: Path) -> None:
    source = 'TEMPLATE = """\n%s rows\n!important\n"""\n\ndef rows():\n    return TEMPLATE'
    notebook = write_notebook(tmp_path / "s.ipynb", [("code", source)])
    assert export_notebook(notebook) == f"# %% cell 1\n{source}\n"


def test_missing_or_unreadable_notebook_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="does not exist"):
        export_notebook(tmp_path / "nope.ipynb")
    (tmp_path / "junk.ipynb").write_text("not json")
    with pytest.raises(PackageError, match="cannot read notebook"):
        export_notebook(tmp_path / "junk.ipynb")


def test_notebook_must_define_the_flow_class(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "other.ipynb", [("code", "x = 1")])
    with pytest.raises(PackageError, match="does not define the flow class NbFlow"):
        package_flow(_class_named("NbFlow"), b"", notebook_path=notebook)


# -- packaging a module ------------------------------------------------------------------------

def test_package_from_the_module_that_defines_the_flow(tiny_flow: type[FLSpec],
                                                       package: ExperimentPackage,
                                                       tmp_path: Path) -> None:
    assert package.flow_class == "TinyFlow"
    assert package.entry == "pkgtest_flows.py"
    assert package.files == {"pkgtest_flows.py": (tmp_path / "pkgtest_flows.py").read_text()}
    assert package.module.startswith(MODULE_PREFIX) and package.module.isidentifier()
    assert package.initial_state == b"\x00state\xff"
    assert package.requirements == (f"fedloom=={fedloom.__version__}",
                                    f"numpy=={np.__version__}")
    assert package.metadata["source"] == f"module:{(tmp_path / 'pkgtest_flows.py').resolve()}"
    assert package.metadata["created_by"] == "alice"
    assert package.metadata["python"] == ".".join(map(str, sys.version_info[:3]))
    assert package.metadata["fedloom"] == fedloom.__version__
    assert package.metadata["flow_module"] == "pkgtest_flows"
    assert "unresolved_imports" not in package.metadata
    assert collect_sources(tiny_flow).module == package.module  # known before the state


def test_local_imports_are_reported_as_unresolved(tmp_path: Path) -> None:
    (tmp_path / "pkgtest_helpers.py").write_text("X = 1\n")
    path = tmp_path / "pkgtest_uses_helpers.py"
    path.write_text("import pkgtest_helpers\n" + FLOW_SOURCE.format(value=1))
    sys.path.insert(0, str(tmp_path))
    try:
        flow_cls = import_file(path).TinyFlow
    finally:
        sys.path.remove(str(tmp_path))
    pkg = package_flow(flow_cls, b"")
    assert pkg.metadata["unresolved_imports"] == "pkgtest_helpers"


def test_flow_of_an_interactive_session_needs_notebook_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    with pytest.raises(PackageError, match=r"interactive session.*notebook_path="):
        package_flow(_class_named("Interactive"), b"")


def test_a_script_run_as_main_is_packaged_without_its_run_lines(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "train.py"
    script.write_text(FLOW_SOURCE.format(value=1) + textwrap.dedent("""\

        flow = TinyFlow()
        flow.runtime = LocalRuntime()
        flow.run()
        """))
    main = types.ModuleType("__main__")
    main.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", main)
    pkg = package_flow(_class_named("TinyFlow"), b"")
    assert pkg.entry == "train.py"
    assert pkg.files["train.py"] == FLOW_SOURCE.format(value=1)


SCRIPT = '''\
"""A user's script: definitions, and what it does when it runs."""

import argparse
import sys

import numpy as np

from fedloom import FLSpec, LocalRuntime, aggregator, collaborator

try:
    import pkgtest_missing  # optional
except ImportError:
    pkgtest_missing = None

SCALE = 2.0
CONFIG = {"lr": 0.5}
CONFIG["lr"] = 1.0
CONFIG.update(momentum=0.9)
print("SIDE EFFECT: loading")
np.random.seed(0)
parser = argparse.ArgumentParser()
parser.add_argument("--rounds", type=int, default=1)


def scaled(x):
    return x * SCALE * CONFIG["lr"]


class Model:
    def __init__(self, weights):
        self.weights = weights


class ScriptFlow(FLSpec):
    def __init__(self, model=None, **kwargs):
        super().__init__(**kwargs)
        self.model = Model(np.zeros(2)) if model is None else model

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        self.model = Model(scaled(self.model.weights + 1))
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.model = inputs[0].model
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def main():
    args = parser.parse_args()
    flow = ScriptFlow()
    flow.runtime = LocalRuntime()
    flow.run()
    print("SIDE EFFECT: OK", args)


if __name__ == "__main__":
    main()
    if sys.argv[1:] == ["--twice"]:
        main()
print("SIDE EFFECT: done")
'''

# What the sites get: the script up to ScriptFlow's end, minus what runs things.
SCRIPT_AT_THE_SITES = SCRIPT.split("\n\n\ndef main")[0].replace(
    "    pkgtest_missing = None\n", "    pass\n").replace(
    'print("SIDE EFFECT: loading")\nnp.random.seed(0)\nparser = argparse.ArgumentParser()\n'
    'parser.add_argument("--rounds", type=int, default=1)\n', "") + "\n"


def as_main_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str,
                   name: str = "train.py") -> Path:
    """``text`` as the script this process runs (its ``__main__``)."""
    script = tmp_path / name
    script.write_text(text)
    main = types.ModuleType("__main__")
    main.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", main)
    return script


def test_a_script_is_packaged_as_its_definitions_and_that_is_what_is_shown_and_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
        ) -> None:
    # The sites run imports, classes, functions and what they use; not print(), seeding,
    # argument parsing, main() or the `if __name__ == "__main__":` block.
    as_main_script(tmp_path, monkeypatch, SCRIPT)
    pkg = package_flow(_class_named("ScriptFlow"), b"")
    assert pkg.files == {"train.py": SCRIPT_AT_THE_SITES}
    # what reviewers see is that text, line by line, and the digest is over it
    plan = Plan("1-a", "alice", pkg.digest, ("a",), pkg, ())
    shown = [line.split(" | ", 1)[1] if " | " in line else "" for line in
             plan.text().split("Source train.py")[1].splitlines()[1:]]
    assert shown == SCRIPT_AT_THE_SITES.splitlines() and "SIDE EFFECT" not in plan.text()
    assert ExperimentPackage.from_bytes(pkg.to_bytes(), pkg.digest).files == pkg.files
    # and what a site runs: nothing is printed, the flow works
    flow_cls = load_package(pkg, tmp_path / "site")
    assert capsys.readouterr().out == ""
    flow = flow_cls()
    flow.runtime = LocalRuntime(aggregator=Aggregator(), collaborators=[Collaborator(name="a")])
    flow.run()
    np.testing.assert_allclose(flow.model.weights, [2.0, 2.0])  # (0 + 1) * SCALE * lr


def test_a_script_that_reads_its_command_line_where_the_sites_would_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A switch on sys.argv would silently take the sites' value: say so, and what to do.
    switch = FLOW_SOURCE.format(value="int(sys.argv[1]) if len(sys.argv) > 1 else 1")
    as_main_script(tmp_path, monkeypatch, "import sys\n" + switch)
    with pytest.raises(PackageError, match=r"train\.py:8: sys\.argv reads the command line, "
                       r"and the sites would run it with theirs .* pass the value to the "
                       r"flow's constructor"):
        package_flow(_class_named("TinyFlow"), b"")
    parsed = FLOW_SOURCE.format(value="ARGS.scale").replace(
        "VALUE = ARGS.scale", "parser = argparse.ArgumentParser()\nARGS = parser.parse_args()"
        "\nVALUE = ARGS.scale")
    as_main_script(tmp_path, monkeypatch, "import argparse\n" + parsed)
    with pytest.raises(PackageError, match=r"train\.py:\d+: parser\.parse_args\(\) reads"):
        package_flow(_class_named("TinyFlow"), b"")
    # read where the flow is run, it is fine: that code does not go to the sites
    fine = FLOW_SOURCE.format(value=1) + "\nif __name__ == '__main__':\n" \
        "    flow = TinyFlow(rounds=int(sys.argv[1]))\n    flow.run()\n"
    as_main_script(tmp_path, monkeypatch, "import sys\n" + fine)
    assert "argv" not in package_flow(_class_named("TinyFlow"), b"").files["train.py"]


def test_a_name_the_flow_uses_but_only_the_main_block_sets_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = FLOW_SOURCE.format(value=0).replace("self.model + VALUE", "self.model + OFFSET")
    as_main_script(tmp_path, monkeypatch, text + "\nif __name__ == '__main__':\n"
                   "    OFFSET = 3\n    TinyFlow().run()\n")
    with pytest.raises(PackageError, match=r"train\.py:\d+: OFFSET is set under `if __name__ "
                       r"== \"__main__\":`, which the sites do not run, but the flow uses it"):
        package_flow(_class_named("TinyFlow"), b"")


def test_a_function_that_runs_something_is_kept_when_the_flow_uses_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `.run()` alone does not make a function a script's main: only if nothing kept uses it.
    text = FLOW_SOURCE.format(value="warm_up()") + textwrap.dedent("""

        def warm_up():
            class Job:
                def run(self):
                    return 1
            return Job().run()
        """)
    as_main_script(tmp_path, monkeypatch, text)
    assert "def warm_up" in package_flow(_class_named("TinyFlow"), b"").files["train.py"]


def test_nested_classes_non_flows_and_relative_imports_are_refused(tmp_path: Path) -> None:
    class Local(FLSpec):
        pass

    with pytest.raises(PackageError, match="top level"):
        package_flow(Local, b"")
    with pytest.raises(PackageError, match="subclass of FLSpec"):
        package_flow(int, b"")
    pkg_dir = tmp_path / "pkgtest_pkg"
    pkg_dir.mkdir()
    (pkg_dir / "__init__.py").write_text("")
    (pkg_dir / "sibling.py").write_text("X = 1\n")
    (pkg_dir / "flows.py").write_text("from .sibling import X\n" + FLOW_SOURCE.format(value=1))
    sys.path.insert(0, str(tmp_path))
    try:
        flow_cls = importlib.import_module("pkgtest_pkg.flows").TinyFlow
    finally:
        sys.path.remove(str(tmp_path))
    with pytest.raises(PackageError, match="relative import"):
        package_flow(flow_cls, b"")


# -- bytes and digest --------------------------------------------------------------------------

def test_round_trip(package: ExperimentPackage) -> None:
    data = package.to_bytes()
    assert data.startswith(MAGIC)
    again = ExperimentPackage.from_bytes(data, expected_digest=package.digest)
    assert again == package and again.digest == package.digest
    for name in ("flow_class", "module", "entry", "requirements", "initial_state"):
        assert getattr(again, name) == getattr(package, name)
    assert dict(again.files) == dict(package.files)
    assert dict(again.metadata) == dict(package.metadata)
    assert again.to_bytes() == data


def test_digest_is_stable_and_order_independent(tiny_flow: type[FLSpec],
                                                package: ExperimentPackage) -> None:
    twice = package_flow(tiny_flow, b"\x00state\xff", created_by="alice")
    assert twice.digest == package.digest and twice.to_bytes() == package.to_bytes()
    reordered = dataclasses.replace(
        package, metadata=dict(reversed(list(package.metadata.items()))),
        requirements=tuple(reversed(package.requirements)))
    assert reordered.digest == package.digest
    assert len(package.digest) == 64 and int(package.digest, 16) >= 0


@pytest.mark.parametrize("change", [
    "files", "initial_state", "requirements", "metadata", "flow_class", "module", "entry"])
def test_digest_changes_with_any_field(package: ExperimentPackage, change: str) -> None:
    source = package.files[package.entry]
    changes: dict[str, object] = {
        "files": {package.entry: source.replace("VALUE = 1", "VALUE = 2")},
        "initial_state": package.initial_state[:-1] + b"\xfe",
        "requirements": (*package.requirements[:-1], package.requirements[-1] + "1"),
        "metadata": {**package.metadata, "created_by": "alicf"},
        "flow_class": "TinyFlox",
        "module": package.module[:-1] + "x",
        "entry": "other.py",
    }
    if change == "entry":
        changed = dataclasses.replace(package, entry="other.py", files={"other.py": source})
    else:
        changed = dataclasses.replace(package, **{change: changes[change]})  # type: ignore[arg-type]
    assert changed.digest != package.digest
    assert ExperimentPackage.from_bytes(changed.to_bytes()).digest == changed.digest


def test_adding_a_file_changes_the_digest(package: ExperimentPackage) -> None:
    more = dataclasses.replace(package, files={**package.files, "data/notes.txt": "x"})
    assert more.digest != package.digest


def test_tampered_bytes_are_a_digest_mismatch(package: ExperimentPackage) -> None:
    data = package.to_bytes()
    for index in (0, len(MAGIC) + 5, len(data) // 2, len(data) - 1):
        tampered = bytearray(data)
        tampered[index] ^= 0x01
        with pytest.raises(DigestMismatchError,
                           match=r"digest mismatch: the package was changed after it was "
                                 r"approved/submitted"):
            ExperimentPackage.from_bytes(bytes(tampered), expected_digest=package.digest)
    with pytest.raises(DigestMismatchError):
        ExperimentPackage.from_bytes(data + b"x", expected_digest=package.digest)


@pytest.mark.parametrize("mangle", [
    lambda d: b"",
    lambda d: b"PK\x03\x04" + d[4:],
    lambda d: d[: len(MAGIC) + 10],
    lambda d: d[:-1],
    lambda d: d + b"extra",
    lambda d: d.replace(b"state\xff", b"statf\xff"),
    lambda d: d.replace(b'"format":1', b'"format":2'),
    lambda d: d.replace(b'"format":1,', b'"format": 1,'),
])
def test_malformed_bytes_are_clear_errors(package: ExperimentPackage, mangle: object) -> None:
    data = mangle(package.to_bytes())  # type: ignore[operator]
    with pytest.raises(PackageError) as info:
        ExperimentPackage.from_bytes(data)
    assert isinstance(info.value, FedloomError)
    assert "package" in str(info.value)


def test_bad_expected_digest_and_bad_fields_are_refused(package: ExperimentPackage) -> None:
    with pytest.raises(PackageError, match="not a sha256 digest"):
        ExperimentPackage.from_bytes(package.to_bytes(), expected_digest="abc")
    with pytest.raises(PackageError, match="relative POSIX"):
        dataclasses.replace(package, entry="../x.py", files={"../x.py": ""})
    with pytest.raises(PackageError, match="entry"):
        dataclasses.replace(package, entry="missing.py")
    with pytest.raises(PackageError, match="identifier"):
        dataclasses.replace(package, module="a.b")
    with pytest.raises(PackageError, match="initial_state"):
        dataclasses.replace(package, initial_state="text")  # type: ignore[arg-type]


def test_package_is_immutable(package: ExperimentPackage) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        package.flow_class = "Other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        package.files["x.py"] = ""  # type: ignore[index]


# -- loading at a site -------------------------------------------------------------------------

def test_load_package_returns_a_working_class(package: ExperimentPackage,
                                              tmp_path: Path) -> None:
    site = tmp_path / "site"
    flow_cls = load_package(package, site)
    assert flow_cls.__name__ == "TinyFlow" and flow_cls.__module__ == package.module
    assert fedloom.check_flow(flow_cls) == []
    assert (site / package.digest[:12] / package.entry).read_text() == \
        package.files[package.entry]
    assert sys.modules[package.module].TinyFlow is flow_cls
    flow = run_locally(flow_cls)
    np.testing.assert_allclose(flow.model, [2.0, 2.0])  # ones + VALUE on each, averaged
    assert load_package(package, site) is flow_cls  # loading again reuses the module


def test_only_the_package_module_name_enters_sys_modules(package: ExperimentPackage,
                                                         tmp_path: Path) -> None:
    before = set(sys.modules)
    load_package(package, tmp_path / "site")
    assert set(sys.modules) - before == {package.module}


def test_same_class_name_different_code_load_side_by_side(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = package_flow(tiny_module(tmp_path / "a", value=1), b"")
    two = package_flow(tiny_module(tmp_path / "b", value=10), b"")
    assert one.flow_class == two.flow_class and one.module != two.module
    first = load_package(one, tmp_path / "site")
    second = load_package(two, tmp_path / "site")
    assert first is not second
    np.testing.assert_allclose(run_locally(first).model, [2.0, 2.0])
    np.testing.assert_allclose(run_locally(second).model, [11.0, 11.0])


def test_load_errors_are_clear(package: ExperimentPackage, tmp_path: Path) -> None:
    missing = dataclasses.replace(package, flow_class="NoSuchFlow")
    with pytest.raises(PackageError, match=r"does not define the flow class NoSuchFlow.*"
                                           r"\['TinyFlow'\]"):
        load_package(missing, tmp_path / "site")
    source = package.files[package.entry] + "\nraise RuntimeError('boom at import')\n"
    broken = dataclasses.replace(package, files={package.entry: source},
                                 module=MODULE_PREFIX + "broken")
    with pytest.raises(PackageError) as info:
        load_package(broken, tmp_path / "site")
    message = str(info.value)
    assert "RuntimeError: boom at import" in message and "Traceback" in message
    assert package.entry in message
    assert broken.module not in sys.modules
    clash = dataclasses.replace(package, module="json")
    with pytest.raises(PackageError, match="already used"):
        load_package(clash, tmp_path / "site")


# -- what a reviewer sees ----------------------------------------------------------------------

def test_describe_package(package: ExperimentPackage) -> None:
    desc = describe_package(package)
    assert json.loads(json.dumps(desc)) == desc
    assert desc["digest"] == package.digest
    assert desc["flow_class"] == "TinyFlow"
    assert [(s["name"], s["placement"]) for s in desc["steps"]] == [
        ("start", "aggregator"), ("train", "collaborator"), ("join", "aggregator"),
        ("end", "aggregator")]
    assert desc["steps"][1]["resources"] == {"num_gpus": "0"}
    assert desc["steps"][2]["join"] is True
    edges = [(t["from"], t["to"], t["foreach"], t["include"], t["exclude"])
             for t in desc["transitions"]]
    assert edges == [("start", "train", "'collaborators'", None, ["private"]),
                     ("train", "join", None, None, None),
                     ("join", "end", None, ["model"], None)]
    text = package.files[package.entry]
    assert desc["files"] == [{"path": "pkgtest_flows.py", "lines": text.count("\n"),
                              "bytes": len(text.encode()), "sha256": desc["files"][0]["sha256"]}]
    assert desc["requirements"] == list(package.requirements)
    assert desc["initial_state"]["bytes"] == len(b"\x00state\xff")
    assert desc["source"].startswith("module:")
    assert desc["warnings"] == []


def test_describe_does_not_run_the_code_and_warns_on_surprises(
        package: ExperimentPackage) -> None:
    odd = dataclasses.replace(package, files={package.entry: "raise SystemExit('ran!')\n"})
    desc = describe_package(odd)
    assert desc["steps"] == [] and desc["transitions"] == []
    assert any("not defined" in w for w in desc["warnings"])


def test_verified_bytes_decode_to_the_same_package(package: ExperimentPackage) -> None:
    again = ExperimentPackage.from_verified_bytes(memoryview(package.to_bytes()), package.digest)
    assert again == package and again.initial_state == package.initial_state
    assert again.files == package.files and again.to_bytes() == package.to_bytes()


def test_a_package_whose_header_misstates_a_part_is_refused_even_with_its_digest(
        package: ExperimentPackage) -> None:
    import hashlib

    from fedloom.federation.package import MAGIC

    data = package.to_bytes()
    end = data.index(b"\n", len(MAGIC))
    header = json.loads(data[len(MAGIC):end])
    header["initial_state"]["sha256"] = "0" * 64  # canonical JSON, wrong digest of the part
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    forged = MAGIC + raw + data[end:]
    with pytest.raises(PackageError, match="does not match its sha256"):
        ExperimentPackage.from_bytes(forged, expected_digest=hashlib.sha256(forged).hexdigest())


def test_a_flow_defined_only_when_the_script_runs_as_a_script_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    guarded = "if __name__ == '__main__':\n" + textwrap.indent(FLOW_SOURCE.format(value=1), "    ")
    as_main_script(tmp_path, monkeypatch, guarded)
    with pytest.raises(PackageError, match=r"train\.py defines TinyFlow under `if __name__ == "
                       r"\"__main__\":`, which the sites do not run; define it at module level"):
        package_flow(_class_named("TinyFlow"), b"")
