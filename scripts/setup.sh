#!/usr/bin/env bash
# Create .venv and install fedloom with its dev extras. Fast no-op when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.fedloom-installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
  exit 0
fi
echo "setup: installing fedloom and its dependencies into .venv (first time: a few minutes)..."
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev,checkpoint,ray]"
# Optional: a pinned CPU build of torch (the tutorial and torch tests skip without it).
.venv/bin/python -m pip install --quiet "torch==2.13.0" \
  || echo "setup: torch==2.13.0 is not available here; torch tests will be skipped"
# The run page's browser test needs Debian's chromium (.ci/run installs it; here it is a hint).
command -v chromium >/dev/null 2>&1 \
  || echo "setup: no chromium here; the run page's browser test will be skipped" \
          "(as root: apt-get install --no-install-recommends chromium)"
touch "$stamp"
echo "setup: done"
