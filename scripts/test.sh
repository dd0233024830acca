#!/usr/bin/env bash
# The test command: set up, lint, then every test (unit, render, lab, Molecule).
#   scripts/test.sh            everything
#   scripts/test.sh -m 'not lab'   only what needs no lab (fast)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

# vLLM's own `vllm serve` parser, one CPU-only venv per shipped flag table (built once by
# scripts/flag-table, kept in ~/.cache/ascend-fleet): the tests compare the tables and our
# parser with it. Built in the background while lint, the lab images and the first tests
# run; a test that needs a venv waits for its build (scripts/flag-table --venv takes the
# same lock) or makes it.
mkdir -p lab/.cache
(
    for table in ascend_fleet/data/vllm-*-serve-flags.json; do
        version=${table#ascend_fleet/data/vllm-}
        scripts/flag-table --venv "${version%-serve-flags.json}" >/dev/null || true
    done
    # The evaluation clients of the lab (AISBench, `vllm bench serve`): the lab's evaluation
    # tests wait for this build the same way (lab/eval/clients takes a lock).
    lab/eval/clients >/dev/null || true
) > lab/.cache/background-venvs.log 2>&1 &

echo "== lint: ruff, yamllint, ansible-lint (production profile)"
ruff check .
yamllint --strict .
ansible-lint --offline -q

echo "== lab: Docker Engine, node and engine images (built once, then cached)"
lab/labctl build
lab/engine/build >/dev/null

echo "== tests"
exec python -m pytest "$@"
