#!/usr/bin/env bash
# The test command: set up, lint, then every test (unit, render, lab, Molecule).
#   scripts/test.sh            everything
#   scripts/test.sh -m 'not lab'   only what needs no lab (fast)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "== lint: ruff, yamllint, ansible-lint (production profile)"
ruff check .
yamllint --strict .
ansible-lint --offline -q

echo "== tests"
exec python -m pytest "$@"
