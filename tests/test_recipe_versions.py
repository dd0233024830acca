"""Both recipes: every shipped topology renders, each with its own vLLM version's flag table,
and the v0.23.0 renders carry exactly the v0.23.0 tutorial's scripts.

The v0.23.0 tutorial is ``tests/data/vllm-ascend-v0.23.0-DeepSeek-V4-Flash.md``, the file
``docs/source/tutorials/models/DeepSeek-V4-Flash.md`` at the vllm-ascend tag v0.23.0
(vllm-project/vllm-ascend, Apache-2.0); its facts are derived from that text at test time.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from ascend_fleet.recipes import load_recipe
from ascend_fleet.serveflags import FlagSpec, ServeFlagError, UnknownFlagError, parse_serve_argv
from tests.conftest import TOPOLOGIES, load_plan, run_playbook
from tests.seed import (
    V0230_SCRIPT_NAMES,
    V0230_TEXT,
    derive_facts,
    export_lines,
    exported_names,
    fill_placeholders,
    run_script,
    tutorial_script,
)
from tests.test_render_seed import CASES, rank0_args, script_of
from tests.test_validation import plan_with

RECIPE = "dsv4-flash-w8a8-mtp@v0.23.0"
SPEC = FlagSpec.load("0.23.0")
FACTS = derive_facts(V0230_TEXT.read_text(), V0230_SCRIPT_NAMES)
DEVIATIONS = load_recipe(RECIPE).get("deviations") or []
TUTORIAL = {name: tutorial_script(FACTS, name, DEVIATIONS) for name in FACTS["scripts"]}
PARAMS = [(topo, host, seed) for topo, hosts in CASES.items() for host, seed in hosts.items()]


@pytest.fixture(scope="session")
def rendered_v0230(tmp_path_factory) -> dict[str, Path]:
    """Every shipped inventory rendered with the v0.23.0 recipe (playbooks/render.yml)."""
    out = {}
    for name in TOPOLOGIES:
        target = tmp_path_factory.mktemp(f"render-v0230-{name}")
        run_playbook(
            "playbooks/render.yml", "-i", name, "-e", f"fleet_render_dir={target}", "-e", f"fleet_recipe={RECIPE}"
        )
        out[name] = target
    return out


def test_tutorial_copy_is_the_v0230_tag_file():
    """The copy names its origin and still has the tag's A2/A3 scripts and 950DT tabs."""
    text = V0230_TEXT.read_text()
    assert "::::{tab-item} Ascend 950DT series" in text
    assert [FACTS["scripts"][n]["lines"] for n in ("a2-single", "a2-decode")] == [[191, 229], [824, 904]]
    assert FACTS["launchers"]["a3-prefill"]["line"] == 649


@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize(("recipe", "vllm", "tag"), [(None, "0.21.0", "v0.21.0rc1"), (RECIPE, "0.23.0", "v0.23.0")])
def test_every_topology_renders_validated_with_its_own_table(topology, recipe, vllm, tag, rendered, rendered_v0230):
    render_dir = (rendered_v0230 if recipe else rendered)[topology]
    plan = load_plan(render_dir)
    assert plan["recipe"] == (recipe or "dsv4-flash-w8a8-mtp@v0.21.0rc1")
    spec = FlagSpec.load(vllm)
    for host, hp in plan["hosts"].items():
        assert hp["image"].split(":")[-1] == tag + ("-a3" if hp["hw_kind"] == "a3" else ""), host
        got = run_script(script_of(render_dir, host), rank0_args(hp), render_dir / f".run-{host}")
        cmd = parse_serve_argv(got.argv, spec)  # raises on anything this version's vLLM refuses
        assert cmd.model == hp["model_path"]


def test_the_plan_validates_with_the_recipes_own_table(tmp_path):
    """A flag only vLLM 0.23.0 has: accepted under the v0.23.0 recipe, refused under 0.21.0's."""
    with pytest.raises(UnknownFlagError):
        parse_serve_argv(["m", "--spec-tokens", "1"], FlagSpec.load("0.21.0"))
    assert parse_serve_argv(["m", "--spec-tokens", "1"], SPEC).values["spec_tokens"] == 1
    src = yaml.safe_load(Path(load_recipe(RECIPE)["_file"]).read_text())
    for vllm, expect_error in (("0.23.0", False), ("0.21.0", True)):
        data = copy.deepcopy(src)
        data["id"] = f"test-spec-tokens@{vllm}"
        data["vllm_version"] = vllm
        data["profiles"]["a3-single"]["serve"].append(["--spec-tokens", 1])
        (tmp_path / f"r{vllm}.yml").write_text(yaml.safe_dump(data))
        plan = plan_with(
            "a3-single",
            host_vars={"node-0": {"fleet_recipe": data["id"], "fleet_recipe_paths": [str(tmp_path)]}},
        )
        errors = [e for e in plan["errors"] if "--spec-tokens" in e]
        assert bool(errors) is expect_error, plan["errors"]
        if expect_error:
            assert "vLLM 0.21.0" in errors[0]


@pytest.mark.parametrize(("topology", "host", "seed"), PARAMS)
def test_v0230_renders_match_the_v0230_tutorial(rendered_v0230, tmp_path, topology, host, seed):
    plan = load_plan(rendered_v0230[topology])
    hp = plan["hosts"][host]
    ours = script_of(rendered_v0230[topology], host)
    theirs = fill_placeholders(TUTORIAL[seed], hp["node_ip"], hp["nic_name"])
    if seed == "a2-prefill":  # 5.2.2 (line 742): kv_port and engine_id differ per P instance
        index = int(host.split("-")[1])
        theirs = theirs.replace('"kv_port": "30000"', f'"kv_port": "{30000 + 100 * index}"')
        theirs = theirs.replace('"engine_id": "0"', f'"engine_id": "{index}"')
    assert export_lines(ours) == export_lines(theirs)
    theirs_head = [x for x in theirs.splitlines()[:-1] if x.strip()]
    ours_head = [
        x
        for x in ours.split("\nexec vllm serve ")[0].splitlines()[1:]
        if x.strip() and (not x.startswith("#") or x in theirs_head)
    ]
    assert ours_head == theirs_head
    args = rank0_args(hp)
    got = run_script(ours, args, tmp_path / "ours")
    want = run_script(theirs, args, tmp_path / "tutorial")
    for name in exported_names(theirs):
        assert got.env.get(name) == want.env.get(name), name
    ours_cmd = parse_serve_argv(got.argv, SPEC)
    want_cmd = parse_serve_argv(want.argv, SPEC)
    assert ours_cmd.model == want_cmd.model == hp["model_path"]
    assert ours_cmd.values == want_cmd.values
    assert len(ours_cmd.given) == len(want_cmd.given)


def test_v0230_launcher_and_image(rendered_v0230):
    plan = load_plan(rendered_v0230["a3-1p1d"])
    text = (rendered_v0230["a3-1p1d"] / "prefill-0" / "launch.sh").read_text()
    line = next(x for x in text.splitlines() if x.startswith("exec "))
    # 5.2.1 line 649: the same launcher options as v0.21.0rc1 (no --dp-deploy-role at v0.23.0)
    for word in ("--dp-size 4", "--tp-size 4", "--dp-size-local 4", "--dp-rpc-port 12321", "--vllm-start-port 7100"):
        assert word in line
    assert "--dp-deploy-role" not in line
    assert plan["hosts"]["prefill-0"]["image"] == "quay.io/ascend/vllm-ascend:v0.23.0-a3"
    assert plan["hosts"]["prefill-0"]["shell_env"]["source"][1][0].startswith("/usr/local/Ascend/cann-9.1.0/")


def test_abbreviation_is_named_not_called_unknown():
    with pytest.raises(ServeFlagError, match="abbreviation of --max-num-seqs") as exc:
        parse_serve_argv(["m", "--max-num-seq", "8"], SPEC)
    assert not isinstance(exc.value, UnknownFlagError)
