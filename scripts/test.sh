#!/usr/bin/env bash
# Installs voxmill with its test extras, then runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
