#!/usr/bin/env bash
# Every check of `make test`: the library is in sync with the notebooks, the notebooks are clean,
# ruff finds nothing (its rules: [tool.ruff] in pyproject.toml), the unit tests pass, and every notebook
# runs end to end with papermill on the toy preset.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
before=$(git status --porcelain -- nbs glscl)
$BIN/nbdev-export
$BIN/nbdev-clean
after=$(git status --porcelain -- nbs glscl)
if [ "$before" != "$after" ]; then
  echo "FAIL: nbdev-export / nbdev-clean changed files: export and clean the notebooks, then commit."
  git status --porcelain -- nbs glscl
  git --no-pager diff --stat -- nbs glscl
  exit 1
fi
echo "nbdev-export and nbdev-clean leave no diff"
$BIN/ruff check .
$BIN/python -m pytest -q -rs --durations=12 "$@" tests
