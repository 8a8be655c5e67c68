#!/usr/bin/env bash
# The README's first command: install everything into .venv and run the main job on embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
"$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# The filter hides setuptools' "Editable installation" notice, one block per editable package (information only).
PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install --quiet -r requirements.txt
.venv/bin/rechub-index quickstart "$@"
