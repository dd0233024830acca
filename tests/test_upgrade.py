"""The order of a rolling upgrade and of a drained restart (ascend_fleet.upgrade), the
recipe found from running images, and the proxy admin client against the real PD proxy."""

from __future__ import annotations

import pytest

from ascend_fleet.upgrade import (
    UpgradeError,
    image_tag_matches,
    recipe_of_images,
    restart_steps,
    upgrade_steps,
)
from tests.conftest import load_plan

OLD = "dsv4-flash-w8a8-mtp@v0.21.0rc1"


@pytest.fixture(scope="module")
def plans(rendered):
    return {name: load_plan(path) for name, path in rendered.items()}


def by_role(plan, role):
    return [i["name"] for i in plan["instances"] if i["role"] == role]


def test_1p1d_is_one_held_switch(plans):
    plan = plans["a3-1p1d"]
    steps = upgrade_steps(plan, ["prefill-0", "decode-0"])
    assert steps["kind"] == "pd" and steps["drain"] == [] and steps["readd"] == []
    switch = steps["switch"]
    assert switch["mode"] == "hold"
    assert switch["names"] == ["prefill-0", "decode-0"] and switch["replace_nodes"] == ["prefill-0", "decode-0"]
    assert [p["type"] for p in switch["proxy"]] == ["prefill", "decode"]
    assert len(switch["proxy"][0]["instances"]) == 4 and len(switch["proxy"][1]["instances"]) == 16


def test_npmd_drains_all_but_one_pair_and_never_lists_two_versions(plans):
    plan = plans["a2-4p4d"]
    names = [i["name"] for i in plan["instances"]]
    steps = upgrade_steps(plan, names)
    prefills, decodes = by_role(plan, "prefill"), by_role(plan, "decode")
    assert len(prefills) == 4 and len(decodes) == 1
    # Three prefill instances drained one at a time; the last prefill and the decode together.
    assert [s["names"] for s in steps["drain"]] == [[p] for p in prefills[1:]]
    assert all(s["mode"] == "drain" for s in steps["drain"])
    assert steps["switch"]["names"] == [prefills[0], decodes[0]] and steps["switch"]["mode"] == "hold"
    # Simulate the proxy's lists: at every moment they hold one version only.
    listed = {n: "old" for n in names}
    version = {n: "old" for n in names}
    for step in steps["drain"]:
        for n in step["names"]:
            del listed[n]
            version[n] = "new"
        assert set(listed.values()) == {"old"}
    for n in steps["switch"]["names"]:  # replaced while the proxy is held
        version[n] = "new"
        listed[n] = "new"
    assert set(listed.values()) == {"new"}
    entries = [e for r in steps["readd"] for e in r["instances"]]
    assert len(entries) == sum(len(p["instances"]) for s in steps["drain"] for p in s["proxy"])
    assert set(version.values()) == {"new"}


def test_up_to_date_instances_are_not_replaced(plans):
    plan = plans["a2-4p4d"]
    assert upgrade_steps(plan, [])["kind"] == "none"
    steps = upgrade_steps(plan, ["decode-0"])
    # A stale anchor is preferred; the others are only taken out and added back.
    assert steps["switch"]["replace"] == ["decode-0"]
    assert all(s["replace"] == [] for s in steps["drain"])


def test_single_node_is_replaced_in_place(plans):
    steps = upgrade_steps(plans["a2-single"], ["node-0"])
    assert steps["kind"] == "single" and steps["switch"]["mode"] == "none" and steps["switch"]["proxy"] == []


def test_unknown_instance_is_refused(plans):
    with pytest.raises(UpgradeError, match="unknown instance"):
        upgrade_steps(plans["a3-1p1d"], ["nope"])
    with pytest.raises(UpgradeError, match="ops_restart_instances: nope"):
        restart_steps(plans["a3-1p1d"], ["nope"])


def test_restart_drains_when_another_instance_of_the_role_serves(plans):
    steps = restart_steps(plans["a2-4p4d"], [])
    assert [(s["names"][0], s["mode"]) for s in steps] == [
        ("prefill-0", "drain"),
        ("prefill-1", "drain"),
        ("prefill-2", "drain"),
        ("prefill-3", "drain"),
        ("decode-0", "hold"),
    ]
    assert [(s["names"][0], s["mode"]) for s in restart_steps(plans["a3-1p1d"], [])] == [
        ("prefill-0", "hold"),
        ("decode-0", "hold"),
    ]
    assert [s["mode"] for s in restart_steps(plans["a2-single"], [])] == ["none"]


def test_image_matching_and_recipe_of_images():
    recipe = {
        "image": {
            "repository": "quay.io/ascend/vllm-ascend",
            "tag": "v0.21.0rc1",
            "tag_suffix": {"a2": "", "a3": "-a3"},
        }
    }
    assert image_tag_matches("quay.io/ascend/vllm-ascend:v0.21.0rc1-a3", recipe, "a3")
    assert image_tag_matches("198.18.0.1:5000/ascend/vllm-ascend:v0.21.0rc1", recipe, "a2")
    assert not image_tag_matches("quay.io/ascend/vllm-ascend:v0.21.0rc1", recipe, "a3")
    assert not image_tag_matches("quay.io/other/vllm-ascend:v0.21.0rc1-a3", recipe, "a3")
    assert not image_tag_matches("quay.io/ascend/vllm-ascend@sha256:" + "0" * 64, recipe, "a3")
    found = recipe_of_images({"d": {"image": "m.example/ascend/vllm-ascend:v0.21.0rc1-a3", "hw_kind": "a3"}})
    assert found == {"recipe": OLD, "problem": ""}
    lost = recipe_of_images({"d": {"image": "m.example/ascend/vllm-ascend:v9-a3", "hw_kind": "a3"}})
    assert lost["recipe"] is None and "upgrade_from_recipe" in lost["problem"] and "v9-a3" in lost["problem"]
    assert recipe_of_images({})["recipe"] is None
