"""Inventory plugin: ``-i a2-4p4d`` means ``inventories/a2-4p4d/hosts.yml``.

Lets the shipped topologies be named bare from the repository root
(``ansible-playbook site.yml -i a2-4p4d``). A real path is never taken over: this plugin
only answers for a source that does not exist as given and names a directory under
``inventories/`` (next to this repository's ansible.cfg) that holds a hosts.yml.
"""

from __future__ import annotations

import os
from pathlib import Path

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin
from ansible.plugins.loader import inventory_loader

DOCUMENTATION = r"""
name: fleet_named
short_description: Resolve a bare topology name to inventories/<name>/hosts.yml
description:
  - Accepts an inventory source that is not an existing path and whose last component
    names a directory under the repository's C(inventories/) holding C(hosts.yml).
  - The file is then parsed by the standard YAML inventory plugin.
"""

REPO_ROOT = Path(__file__).resolve().parents[2]


def _resolve(path: str) -> Path | None:
    if os.path.exists(path) or "," in path:
        return None
    name = Path(path).name
    for base in (Path.cwd() / "inventories", REPO_ROOT / "inventories"):
        candidate = base / name / "hosts.yml"
        if candidate.is_file():
            return candidate
    return None


class InventoryModule(BaseInventoryPlugin):
    NAME = "fleet_named"

    def verify_file(self, path):
        return _resolve(path) is not None

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        target = _resolve(path)
        if target is None:
            raise AnsibleParserError(f"fleet_named: no inventories/<name>/hosts.yml for {path}")
        yaml_plugin = inventory_loader.get("ansible.builtin.yaml")
        yaml_plugin.parse(inventory, loader, str(target), cache=cache)
