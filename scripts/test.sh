#!/usr/bin/env bash
# Installs voxmill with its test extras, then runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# Two test files at a time (pytest-xdist, whole files per worker so module fixtures are built once):
# most of the suite waits on Ray start-up, child processes and servers, so two share 2 cores well
# (6.6 min instead of 12.5 on this 2-core machine). VOXMILL_TEST_WORKERS=0 runs them one by one.
.venv/bin/python -m pytest -q -p no:cacheprovider -n "${VOXMILL_TEST_WORKERS:-2}" --dist loadfile "$@"
