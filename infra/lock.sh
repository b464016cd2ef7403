#!/usr/bin/env bash
# Refresh the dependency locks in requirements/ from pyproject.toml's ranges.
#
#   bash infra/lock.sh            # re-resolve everything to the newest allowed versions
#   bash infra/lock.sh -P NAME    # move one package (pip-compile's --upgrade-package)
#
# dev.txt also locks the benchmark-only `bench` extra (llama-cpp-python), so that
# `pip install -c requirements/dev.txt -e ".[bench]"` is pinned too; `-c` never installs it.
#
# Run it on purpose and commit its diff as its own change, after `bash infra/test.sh` passes
# on the new lock: installs and tests never rewrite the lock. Resolves for CPython 3.11 on
# Linux x86-64 (what CI and the images run). torch is locked without a local version label
# ("2.13.0", not "2.13.0+cpu") so that the same line accepts the CPU and CUDA builds of that
# release: which one a machine gets is decided by the `pip install torch==2.13.0` that every
# install runs first.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=${KVBATCH_LOCK_TOOLS:-/tmp/kvbatch-lock-tools}
[ -x "$tools/bin/pip-compile" ] || { python3 -m venv "$tools" && "$tools/bin/pip" install -q pip-tools; }
args=(--quiet --strip-extras --no-emit-index-url --no-emit-find-links --no-emit-trusted-host
      --resolver=backtracking "$@")
"$tools/bin/pip-compile" "${args[@]}" -o requirements/runtime.txt pyproject.toml
"$tools/bin/pip-compile" "${args[@]}" --extra dev --extra bench -o requirements/dev.txt pyproject.toml
sed -i -E 's/^(torch==[0-9.]+)\+[A-Za-z0-9.]+/\1/' requirements/runtime.txt requirements/dev.txt
echo "locked: $(grep -c '==' requirements/runtime.txt) runtime, $(grep -c '==' requirements/dev.txt) dev packages"
