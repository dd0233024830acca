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

echo "== lab: Docker Engine, node and engine images, evaluation clients (built once, then cached)"
lab/labctl build
lab/engine/build >/dev/null
lab/eval/clients >/dev/null

echo "== tests"
exec python -m pytest "$@"
