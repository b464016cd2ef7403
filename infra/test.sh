#!/usr/bin/env bash
# The project's one test command: install, lint, type-check, run every test.
# .ci/run calls this script; so does a developer on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
# torch first and pinned: the CPU build, never a resolver's multi-GB CUDA pick.
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev]"
ruff check .
ruff format --check .
mypy
python -m pytest -q -p no:cacheprovider "$@"
