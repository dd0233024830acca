"""Order of a rolling upgrade (and of a drained restart) through the PD proxy.

The PD proxy pairs any prefill it lists with any decode it lists, and a prefill and a decode
of different versions cannot exchange KV caches. So the rule is: **the proxy lists instances
of one version at a time.** With n prefill and m decode instances (nPmD) the upgrade is:

1. *Drain steps* (every instance but one prefill and one decode, the "anchors"): one at a
   time, the instance is removed from the proxy (it gets no new requests; the proxy forgets
   it once no request is in flight), replaced by the new version and kept out of the proxy.
   The anchors keep serving the old version meanwhile.
2. *The switch*: the proxy is held (paused once nothing is in flight: new connections wait
   in its accept queue), the anchors are replaced together, the hold is released: the proxy
   now lists only new instances. Then the instances of step 1 are added back.

With 1P1D there are no drain steps: the switch is the whole upgrade, and requests wait
during it. A single-node deployment (no proxy) is replaced in place.

On a failure the instances moved so far are put back on the old recipe (the anchors while
the proxy is still held) and added back, so the proxy again lists only the old version.
"""

from __future__ import annotations

from typing import Any


class UpgradeError(ValueError):
    """An upgrade that cannot be planned (bad input), with what to change."""


def proxy_entries(plan: dict[str, Any], instance: dict[str, Any]) -> list[str]:
    """The proxy's "host:port" entries of one instance (one per DP rank), in rank order."""
    out = []
    for host in instance["nodes"]:
        entry = plan["hosts"][host]
        out.extend(f"{entry['node_ip']}:{rank['api_port']}" for rank in entry["ranks"])
    return out


def _step(plan: dict[str, Any], instances: list[dict[str, Any]], mode: str, stale: set[str]) -> dict[str, Any]:
    return {
        "mode": mode,
        "names": [i["name"] for i in instances],
        "nodes": [n for i in instances for n in i["nodes"]],
        # instances the step replaces (an up-to-date one is only taken out and added back)
        "replace": [i["name"] for i in instances if i["name"] in stale],
        "replace_nodes": [n for i in instances if i["name"] in stale for n in i["nodes"]],
        "proxy": [{"type": i["role"], "instances": proxy_entries(plan, i)} for i in instances if i["role"] != "single"],
    }


def upgrade_steps(plan: dict[str, Any], stale: list[str]) -> dict[str, Any]:
    """The steps that move the instances named in ``stale`` to ``plan`` (the new plan).

    Returns ``{"kind", "drain", "switch", "readd"}``: ``drain`` steps (one instance each,
    taken out of the proxy, replaced, kept out), then one ``switch`` step (mode ``hold``:
    the anchors, replaced while the proxy holds requests; mode ``none`` for a single node),
    then ``readd``: the proxy entries added back after the switch. Nothing stale: no steps.
    """
    instances = plan.get("instances") or []
    names = {i["name"] for i in instances}
    unknown = sorted(set(stale) - names)
    if unknown:
        raise UpgradeError(f"unknown instance(s) {', '.join(unknown)}; the instances are {', '.join(sorted(names))}")
    stale_set = set(stale)
    empty = {"kind": "none", "drain": [], "switch": None, "readd": []}
    if not stale_set:
        return empty
    singles = [i for i in instances if i["role"] == "single"]
    if singles:
        return {**empty, "kind": "single", "switch": _step(plan, singles, "none", stale_set)}
    if plan.get("proxy") is None:
        raise UpgradeError("a prefill/decode plan without a PD proxy cannot be drained")
    anchors = []
    for role in ("prefill", "decode"):
        of_role = [i for i in instances if i["role"] == role]
        if not of_role:
            raise UpgradeError(f"the plan has no {role} instance")
        # Prefer a stale anchor: an up-to-date one would need no replacement under the hold.
        anchors.append(next((i for i in of_role if i["name"] in stale_set), of_role[0]))
    anchor_names = {a["name"] for a in anchors}
    # Prefill instances first, then decode, in plan order.
    rest = [i for i in instances if i["name"] not in anchor_names]
    drain = [_step(plan, [i], "drain", stale_set) for i in rest]
    return {
        "kind": "pd",
        "drain": drain,
        "switch": _step(plan, anchors, "hold", stale_set),
        "readd": [entry for step in drain for entry in step["proxy"]],
    }


def restart_steps(plan: dict[str, Any], selected: list[str]) -> list[dict[str, Any]]:
    """A drained rolling restart (same version): prefill (or single) instances, then decode.

    An instance is drained through the proxy (removed, restarted, added back) when another
    instance of its role stays in the proxy meanwhile; the last of its role is restarted
    while the proxy holds requests (mode ``hold``); a single node has no proxy (``none``).
    """
    instances = plan.get("instances") or []
    names = [i["name"] for i in instances]
    unknown = sorted(set(selected) - set(names))
    if unknown:
        raise UpgradeError(
            f"unknown instance(s) in ops_restart_instances: {', '.join(unknown)}; the instances are {', '.join(names)}"
        )
    order = [i for i in instances if i["role"] != "decode"] + [i for i in instances if i["role"] == "decode"]
    chosen = [i for i in order if not selected or i["name"] in selected]
    steps = []
    for inst in chosen:
        if inst["role"] == "single" or plan.get("proxy") is None:
            mode = "none"
        else:
            others = [i for i in instances if i["role"] == inst["role"] and i["name"] != inst["name"]]
            mode = "drain" if others else "hold"
        steps.append(_step(plan, [inst], mode, {inst["name"]}))
    return steps


def image_tag_matches(image: str, recipe: dict[str, Any], hw_kind: str) -> bool:
    """Whether a container's image reference (any registry or mirror) is the recipe's image."""
    spec = recipe.get("image") or {}
    tag = f"{spec.get('tag', '')}{(spec.get('tag_suffix') or {}).get(hw_kind, '')}"
    repo_path = str(spec.get("repository", "")).split("/", 1)[-1]
    if "@" in image:  # pinned by digest: the tag is gone, only the repository can be compared
        return False
    name, _, have_tag = image.rpartition(":")
    if "/" in have_tag or not name:
        return False
    return have_tag == tag and (name == repo_path or name.endswith("/" + repo_path))


def recipe_of_images(images: dict[str, dict[str, str]], extra_paths: list[str] | None = None) -> dict[str, Any]:
    """The recipe the running engines come from, from their images.

    ``images``: host -> {"image": container image reference, "hw_kind": a2|a3}. Returns
    ``{"recipe": id or None, "problem": text or ""}``: exactly one known recipe must match
    every host's image.
    """
    from .recipes import RecipeError, load_recipe, recipe_files

    if not images:
        return {"recipe": None, "problem": "no engine container runs: deploy with site.yml first"}
    matches = []
    for rid in sorted(recipe_files(extra_paths)):
        try:
            recipe = load_recipe(rid, extra_paths)
        except RecipeError:
            continue
        if all(image_tag_matches(v["image"], recipe, v["hw_kind"]) for v in images.values()):
            matches.append(rid)
    seen = ", ".join(f"{h}: {v['image']}" for h, v in sorted(images.items()))
    if len(matches) == 1:
        return {"recipe": matches[0], "problem": ""}
    if not matches:
        return {
            "recipe": None,
            "problem": f"the running engines' images match no single known recipe ({seen}); "
            "set upgrade_from_recipe to the recipe they were deployed with",
        }
    return {
        "recipe": None,
        "problem": f"the running engines' images ({seen}) match several recipes ({', '.join(matches)}); "
        "set upgrade_from_recipe to the one they were deployed with",
    }
