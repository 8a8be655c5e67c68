#!/usr/bin/env bash
# The README's test command: install everything into .venv, lint, run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
"$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# The filter hides setuptools' "Editable installation" notice, one block per editable package (information only).
PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install --quiet -r requirements-dev.txt
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
