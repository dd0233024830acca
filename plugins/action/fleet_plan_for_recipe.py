"""fleet_plan_for_recipe: the fleet_plan action's plan, for another recipe than fleet_recipe.

The upgrade needs the plan of the recipe the engines run now (to put an instance back on
it) while ``-e fleet_recipe=...`` names the new one. Same inventory, same validation; only
``fleet_recipe`` is replaced for every host.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase


class _WithRecipe(Mapping):
    """A host's variables with fleet_recipe replaced (everything else as Ansible has it)."""

    def __init__(self, base, recipe: str) -> None:
        self._base, self._recipe = base, recipe

    def __getitem__(self, key):
        return self._recipe if key == "fleet_recipe" else self._base[key]

    def __iter__(self):
        yield from {*self._base, "fleet_recipe"}

    def __len__(self) -> int:
        return len({*self._base, "fleet_recipe"})


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("mode", "recipe"))

    def run(self, tmp=None, task_vars=None):
        super().run(tmp, task_vars)
        task_vars = task_vars or {}
        recipe = self._task.args.get("recipe")
        if not isinstance(recipe, str) or not recipe:
            raise AnsibleActionFail("fleet_plan_for_recipe: recipe must be a recipe id")
        hostvars = task_vars["hostvars"]
        names = list(task_vars["groups"].get("all", []))
        vars_ = dict(task_vars)
        vars_["hostvars"] = {h: _WithRecipe(hostvars[h], recipe) for h in names}
        task = self._task.copy()
        task.args = {"mode": self._task.args.get("mode", "deploy")}
        action = None
        # The collection's name first (installed), then the checkout's (ansible.cfg action_plugins).
        for name in ("ascend.fleet.fleet_plan", "fleet_plan"):
            action = self._shared_loader_obj.action_loader.get(
                name,
                task=task,
                connection=self._connection,
                play_context=self._play_context,
                loader=self._loader,
                templar=self._templar,
                shared_loader_obj=self._shared_loader_obj,
            )
            if action is not None:
                break
        if action is None:
            raise AnsibleActionFail("fleet_plan_for_recipe: the fleet_plan action plugin is not found")
        return copy.deepcopy(action.run(tmp, vars_))
