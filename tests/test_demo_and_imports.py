"""The README's demo trains for real; a run without checkpoints needs no Metaflow or Ray."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_demo():
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("digits_demo", ROOT / "examples" /
                                                  "digits_demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["digits_demo"] = module
    spec.loader.exec_module(module)
    return module


def test_demo_trains_a_federated_model(capsys):
    accuracy = load_demo().main(["--rounds", "6", "--collaborators", "4", "--seed", "0"])
    assert accuracy > 0.9
    out = capsys.readouterr().out
    assert "round 6" in out.lower() or "6/6" in out


@pytest.mark.slow
def test_the_quick_start_demo_trains_across_a_real_federation(tmp_path):
    """What scripts/demo.sh runs: a director and envoys as processes, TLS, the digits flow."""
    pytest.importorskip("sklearn")
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "digits_federation.py"),
                           "--rounds", "3", "--envoys", "2", "--keep", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "[join @ aggregator] round   3/3" in done.stdout
    accuracy = float(re.search(r"final global test accuracy: ([\d.]+)", done.stdout).group(1))
    assert accuracy > 0.85
    assert (tmp_path / "pki").is_dir() and (tmp_path / "envoy_site_1.yaml").is_file()


def test_a_plain_run_imports_neither_metaflow_nor_ray():
    script = (
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from tests.test_engine import Rounds, data_runtime\n"
        "flow = Rounds(rounds=2)\n"
        "flow.runtime = data_runtime()\n"
        "flow.run()\n"
        "print('metaflow' in sys.modules, 'ray' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False False"
