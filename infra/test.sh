#!/usr/bin/env bash
# The project's one test command: install the locked dependencies into a project-local
# virtual environment, then lint, type-check and run every test. .ci/run calls this script;
# so does a developer on a fresh machine.
#
# The environment is .venv/ (override with KVBATCH_VENV), created on first use and reused
# after: what the tests import is exactly what requirements/dev.txt locks, never a package
# the machine happened to have. Refresh the lock on purpose with `bash infra/lock.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${KVBATCH_VENV:-.venv}
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
py="$venv/bin/python"
# torch first and pinned: the CPU build, never a resolver's multi-GB CUDA pick.
"$py" -m pip install -q torch==2.13.0
"$py" -m pip install -q -c requirements/dev.txt -e ".[dev]"
"$py" -m pip check
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
"$venv/bin/mypy"
# pytest exits 5 when it ran no test: a failure here too, never a silent pass.
# Three test processes (pytest-xdist; KVBATCH_TEST_PROCS=0 runs one) on CI's two cores: much
# of the suite waits on the workers, APIs and Redis servers it starts, so a third process
# fills the cores while the others wait (measured: 5:46 against 6:50 with two, 2 cores).
# Whole files go to one process, so module fixtures (a loaded model, transformers'
# reference outputs) are built once, and the files with slow tests go first
# (tests/conftest.py); tests/conftest.py gives each process one torch thread.
exec "$py" -m pytest -q -p no:cacheprovider --durations=30 \
    -n "${KVBATCH_TEST_PROCS:-3}" --dist loadfile "$@"
