"""Filters of the eval role: the smoke paths and the thresholds (``ascend_fleet.evaluation``)."""

from __future__ import annotations

import sys

from ansible.errors import AnsibleError, AnsibleFilterError

try:
    from ascend_fleet import evaluation
    from ascend_fleet.recipes import RecipeError, load_recipe
except ImportError as exc:
    raise AnsibleError(
        f"the Python package ascend_fleet is not installed for {sys.executable} "
        "(the Python that runs Ansible): run scripts/setup.sh, or pip install -e . in the checkout"
    ) from exc


def eval_thresholds(recipe_id: str, overrides: dict | None = None) -> dict:
    try:
        return evaluation.thresholds(load_recipe(recipe_id), overrides or {})
    except (evaluation.EvalError, RecipeError) as exc:
        raise AnsibleFilterError(str(exc)) from None


def eval_recipe(recipe_id: str) -> dict:
    """The recipe's ``evaluation`` block."""
    try:
        return load_recipe(recipe_id).get("evaluation") or {}
    except RecipeError as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule:
    def filters(self):
        return {"fleet_eval_smoke_paths": evaluation.smoke_paths,
                "fleet_eval_thresholds": eval_thresholds,
                "fleet_eval_recipe": eval_recipe}
