"""Recipes: the tutorial's values as data (model x image version x hardware x role).

A recipe is a YAML file in ``ascend_fleet/recipes/`` (or in a directory the user adds
with ``fleet_recipe_paths``). It names the model, the image, the per-hardware device
counts, the launcher and proxy, the kv port scheme, and *profiles*: one per node role,
each holding the ordered environment exports and ``vllm serve`` flags of the tutorial.
A profile may ``extends:`` another and change flags with ``serve_set`` (replace in place,
or append when new) and ``serve_unset``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

BUILTIN_DIR = Path(__file__).resolve().parent / "recipes"
DEFAULT_RECIPE = "dsv4-flash-w8a8-mtp@v0.21.0rc1"


class RecipeError(ValueError):
    """A recipe that cannot be found or is malformed."""


# libyaml's safe loader when PyYAML has it (about ten times faster than the pure-Python one):
# every run reads the recipes, and the roles' defaults and argument specs (fleet_plan).
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_PARSED: dict[tuple[str, int, int], Any] = {}


def _read_yaml(path: Path) -> Any:
    """A recipe file's data, parsed once per file version (a fresh copy each call)."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _PARSED:
        _PARSED[key] = yaml.load(path.read_text(), Loader=YAML_LOADER)
    return copy.deepcopy(_PARSED[key])


def _flatten_pairs(items: list[Any]) -> list[list[Any]]:
    """YAML anchors let a list embed another list of pairs: flatten one level."""
    out: list[list[Any]] = []
    for item in items or []:
        if isinstance(item, list) and item and isinstance(item[0], list):
            out.extend(_flatten_pairs(item))
        elif isinstance(item, list):
            out.append(list(item))
        else:
            raise RecipeError(f"expected a [name, value] pair, got {item!r}")
    return out


def recipe_files(extra_paths: list[str] | None = None) -> dict[str, Path]:
    """Map recipe id -> file, searching user paths first, then the built-in recipes."""
    found: dict[str, Path] = {}
    for directory in [*(extra_paths or []), str(BUILTIN_DIR)]:
        for path in sorted(Path(directory).expanduser().glob("*.yml")):
            try:
                rid = _read_yaml(path).get("id")
            except (yaml.YAMLError, AttributeError) as exc:
                raise RecipeError(f"recipe {path}: not a YAML mapping ({exc})") from None
            if rid and rid not in found:
                found[rid] = path
    return found


def load_recipe(recipe_id: str = DEFAULT_RECIPE, extra_paths: list[str] | None = None) -> dict:
    files = recipe_files(extra_paths)
    if recipe_id not in files:
        raise RecipeError(
            f"unknown recipe {recipe_id!r}; known: {', '.join(sorted(files)) or 'none'} "
            "(set fleet_recipe, or add a directory with fleet_recipe_paths)"
        )
    data = _read_yaml(files[recipe_id])
    data["_file"] = str(files[recipe_id])
    profiles = {}
    version = str(data.get("vllm_version", "0.21.0"))
    for name in data.get("profiles", {}):
        profiles[name] = _resolve_profile(data["profiles"], name, [], version)
    data["profiles"] = profiles
    return data


def _resolve_profile(raw: dict[str, Any], name: str, chain: list[str], version: str = "0.21.0") -> dict[str, Any]:
    if name in chain:
        raise RecipeError(f"profile {name!r}: extends loop {' -> '.join([*chain, name])}")
    if name not in raw:
        raise RecipeError(f"profile {name!r} is extended but not defined")
    own = copy.deepcopy(raw[name])
    base: dict[str, Any] = {}
    if "extends" in own:
        base = _resolve_profile(raw, own.pop("extends"), [*chain, name], version)
    merged = {**base, **{k: v for k, v in own.items() if k not in ("serve_set", "serve_unset")}}
    merged["env"] = _flatten_pairs(own.get("env", base.get("env", [])))
    serve = _flatten_pairs(own.get("serve", base.get("serve", [])))
    merged["serve"] = apply_serve_changes(serve, own.get("serve_set") or {}, own.get("serve_unset") or [], version)
    merged.setdefault("preamble", [])
    merged.setdefault("script_vars", False)
    merged["name"] = name
    for key in ("hw", "role", "tp_size", "dp_size_local"):
        if key not in merged:
            raise RecipeError(f"profile {name!r}: missing {key!r}")
    return merged


def apply_serve_changes(
    serve: list[list[Any]], set_: dict[str, Any], unset: list[str], version: str = "0.21.0"
) -> list[list[Any]]:
    """Replace flags in place (append new ones); ``None`` as a value or ``unset`` removes."""
    out = [list(pair) for pair in serve]
    for flag, value in set_.items():
        idx = next((i for i, pair in enumerate(out) if pair[0] == flag), None)
        if value is None:
            if idx is not None:
                out.pop(idx)
            continue
        pair = [flag] if value is True and flag_is_switch(flag, version) else [flag, value]
        if idx is None:
            out.append(pair)
        else:
            out[idx] = pair
    return [pair for pair in out if pair[0] not in set(unset)]


def container_settings(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe's ``container`` block: is its tutorial's ``docker run`` privileged, and why.

    Privileged mode is on only where the recipe's tutorial asks for it; ``reason`` (the
    tutorial's line) is then required, and the run prints it with the variable that turns
    it off (serve_privileged)."""
    block = recipe.get("container") or {}
    where = f"recipe {recipe.get('id', '?')}: container"
    if not isinstance(block, dict) or set(block) - {"privileged", "reason"}:
        raise RecipeError(f"{where}: expected a mapping with privileged (true/false) and reason")
    privileged = block.get("privileged", False)
    reason = block.get("reason") or ""
    if not isinstance(privileged, bool) or not isinstance(reason, str):
        raise RecipeError(f"{where}: privileged must be true or false, reason a text")
    if privileged and not reason.strip():
        raise RecipeError(f"{where}: privileged is true without a reason (name the tutorial line that asks for it)")
    return {"privileged": privileged, "reason": reason.strip()}


def flag_is_switch(flag: str, version: str = "0.21.0") -> bool:
    """Flags written without a value (``--enforce-eager``); a guess refined by the flag table."""
    from .serveflags import FlagSpec  # local import: serveflags is optional for recipe loading

    found = FlagSpec.load(version).lookup(flag)
    return bool(found and found[0].nargs == 0)
