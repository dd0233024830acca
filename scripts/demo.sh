#!/usr/bin/env bash
# The main job on the lab: bring up a simulated Atlas cluster for one topology, then run
# the real bring-up against it, ending with the verified answer.
#   scripts/demo.sh [TOPOLOGY]     (default a2-4p4d; any name under inventories/)
# Tear the lab down afterwards with: lab/labctl down TOPOLOGY
set -euo pipefail
cd "$(dirname "$0")/.."
topology=${1:-a2-4p4d}
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
# Facts are cached per lab topology (host names repeat between topologies).
export ANSIBLE_CACHE_PLUGIN_CONNECTION="$PWD/lab/.state/$topology/facts"

echo "== lab: $topology"
lab/labctl up "$topology"

echo "== ansible-playbook site.yml -i $topology -i lab/.state/$topology/hosts.yml"
ansible-playbook site.yml -i "$topology" -i "lab/.state/$topology/hosts.yml"
