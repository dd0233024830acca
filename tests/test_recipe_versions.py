"""Both recipes: every shipped topology renders, each with its own vLLM version's flag table,
and the v0.23.0 renders carry exactly the v0.23.0 tutorial's scripts.

The v0.23.0 tutorial is ``tests/data/vllm-ascend-v0.23.0-DeepSeek-V4-Flash.md``, the file
``docs/source/tutorials/models/DeepSeek-V4-Flash.md`` at the vllm-ascend tag v0.23.0
(vllm-project/vllm-ascend, Apache-2.0); its facts are derived from that text at test time.
"""

from __future__ import annotations

import copy
import functools
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from ascend_fleet.recipes import load_recipe
from ascend_fleet.serveflags import FlagSpec, ServeFlagError, UnknownFlagError, parse_serve_argv
from tests.conftest import RENDER_RECIPES, REPO, TOPOLOGIES, load_plan
from tests.seed import (
    V0230_SCRIPT_NAMES,
    V0230_TEXT,
    derive_facts,
    exported_names,
    run_script,
    tutorial_script,
)
from tests.test_render_seed import CASES, assert_same_preamble, rank0_args, script_of, tutorial_for
from tests.test_validation import plan_with

RECIPE = "dsv4-flash-w8a8-mtp@v0.23.0"
SPEC = FlagSpec.load("0.23.0")
FACTS = derive_facts(V0230_TEXT.read_text(), V0230_SCRIPT_NAMES)
DEVIATIONS = load_recipe(RECIPE).get("deviations") or []
TUTORIAL = {name: tutorial_script(FACTS, name, DEVIATIONS) for name in FACTS["scripts"]}
PARAMS = [(topo, host, seed) for topo, hosts in CASES.items() for host, seed in hosts.items()]


@pytest.fixture(scope="session")
def rendered_v0230(renders) -> dict[str, Path]:
    """Every shipped inventory rendered with the v0.23.0 recipe (playbooks/render.yml)."""
    assert RENDER_RECIPES["v0.23.0"] == ("-e", f"fleet_recipe={RECIPE}")
    return renders["v0.23.0"]


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
    theirs = tutorial_for(TUTORIAL[seed], seed, host, hp)  # 5.2.2 (line 742): kv_port, engine_id per P
    assert_same_preamble(ours, theirs)
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


# ---- our parser against vLLM's own parser -------------------------------------------------
# vLLM's parser runs in the CPU-only venv of each release that scripts/flag-table builds
# (scripts/test.sh starts both builds; this waits for them, or builds). If it cannot be
# built the tests skip, and in CI a skip fails.

VERSIONS = ("0.21.0", "0.23.0")


@functools.cache
def vllm_venv(version: str) -> Path:
    proc = subprocess.run(
        [str(REPO / "scripts" / "flag-table"), "--venv", version], capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        pytest.skip(f"no vLLM {version} parser venv (scripts/flag-table --venv {version}):\n{proc.stderr[-2000:]}")
    return Path(proc.stdout.strip())


def vllm_parse(version: str, argvs: list[list[str]]) -> list[dict]:
    """Each argv (after ``vllm serve``) parsed by that vLLM release's own parser."""
    proc = subprocess.run(
        [str(vllm_venv(version) / "bin" / "python"), str(REPO / "scripts" / "vllm_serve_flags.py"), "--check-many"],
        input=json.dumps(argvs),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def ours_parse(version: str, argv: list[str]) -> dict:
    try:
        cmd = parse_serve_argv(argv, FlagSpec.load(version))
    except ServeFlagError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "model": cmd.model, "values": cmd.values}


def same_value(ours, theirs) -> bool:
    """Equal, where a config object (vLLM builds one from the JSON) has every given field."""
    if isinstance(theirs, dict) and set(theirs) == {"__config__"}:
        fields = theirs["__config__"]
        return isinstance(ours, dict) and all(k in fields and same_value(v, fields[k]) for k, v in ours.items())
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return set(ours) == set(theirs) and all(same_value(v, theirs[k]) for k, v in ours.items())
    if isinstance(ours, list) and isinstance(theirs, list):
        return len(ours) == len(theirs) and all(same_value(a, b) for a, b in zip(ours, theirs, strict=True))
    # pydantic turns the tutorial's "30000" (kv_port) into 30000: the same value to vLLM
    return ours == theirs or (isinstance(ours, str) and not isinstance(theirs, str) and ours == str(theirs))


def assert_agree(ours: dict, theirs: dict, argv: list[str]) -> None:
    assert ours["ok"] == theirs["ok"], (argv, ours, theirs)
    if ours["ok"]:
        assert ours["model"] == theirs["model"], argv
        assert set(ours["values"]) == set(theirs["values"]), (argv, set(ours["values"]) ^ set(theirs["values"]))
        for dest, value in ours["values"].items():
            assert same_value(value, theirs["values"][dest]), (argv, dest, value, theirs["values"][dest])


def rendered_argvs(render_dirs: dict[str, Path]) -> list[list[str]]:
    out = []
    for topology, render_dir in render_dirs.items():
        plan = load_plan(render_dir)
        for host, hp in plan["hosts"].items():
            run = run_script(script_of(render_dir, host), rank0_args(hp), render_dir / f".argv-{topology}-{host}")
            out.append(run.argv)
    return out


def test_vllm_parser_agrees_on_every_render(rendered, rendered_v0230):
    for version, dirs in (("0.21.0", rendered), ("0.23.0", rendered_v0230)):
        argvs = rendered_argvs(dirs)
        assert len(argvs) == sum(len(load_plan(d)["hosts"]) for d in dirs.values())
        for argv, theirs in zip(argvs, vllm_parse(version, argvs), strict=True):
            ours = ours_parse(version, argv)
            assert ours["ok"], (version, argv, ours)
            assert_agree(ours, theirs, argv)


M = "/root/.cache/model"
# Lines both parsers judge alike: (argv, accepted by 0.21.0, accepted by 0.23.0).
SAME = [
    ([M, "--port", "8900", "--no-enable-prefix-caching", "--async-scheduling"], True, True),
    ([M, "--enable-prefix-caching", "--no-trust-remote-code", "-ep"], True, True),
    ([M, "--max-model-len", "128k", "--tensor-parallel-size=4"], True, True),
    ([M, "--served-model-name", "a", "b", "--dtype", "bfloat16"], True, True),
    (
        [M, "--additional-config", '{"enable_cpu_binding": true}', "--speculative-config", '{"method": "mtp"}'],
        True,
        True,
    ),
    ([M, "--enable-dsa-cp"], False, False),  # unknown flag
    ([M, "--port"], False, False),  # missing value
    ([M, "--port", "x"], False, False),  # not an int
    ([M, "--dtype", "fp7"], False, False),  # not a choice
    ([M, "--enable-expert-parallel=1"], False, False),  # a switch with a value
    ([M, "--no-enable-expert-parallel=0"], False, False),
    ([M, "--speculative-config", "{num_speculative_tokens: 1}"], False, False),  # invalid JSON
    ([M, "--max-model-len", "lots"], False, False),
    ([M, "--additional-config", "{enable_dsa_cp: true}"], False, False),  # a {...} block that is not JSON
    ([M, "--spec-tokens", "1"], False, True),  # a vLLM 0.23.0 flag
]
# Lines vLLM takes and ours refuses (the cases serveflags' docstring names), with what vLLM
# makes of them: proof that each refusal stops a silent misreading.
STRICTER = [
    ([M, "--max-num-seq", "8"], "max_num_seqs", 8),  # a prefix: vLLM takes --max-num-seqs
    ([M, "--port", "1", "--port", "2"], "port", 2),  # repeated: vLLM keeps the last
    # text that is not a {...} block: vLLM keeps it as a string, and the config is lost
    ([M, "--additional-config", '{"enable_dsa_cp": true'], "additional_config", '{"enable_dsa_cp": true'),
    ([M, "--additional-config", "enable_dsa_cp=true"], "additional_config", "enable_dsa_cp=true"),
]


@pytest.mark.parametrize("version", VERSIONS)
def test_vllm_parser_agrees_on_a_corpus(version):
    index = VERSIONS.index(version)
    theirs_all = vllm_parse(version, [argv for argv, *_ in SAME] + [argv for argv, *_ in STRICTER])
    for (argv, *accepted), theirs in zip(SAME, theirs_all, strict=False):
        ours = ours_parse(version, argv)
        assert ours["ok"] is accepted[index], (version, argv, ours)
        assert_agree(ours, theirs, argv)
    for (argv, dest, value), theirs in zip(STRICTER, theirs_all[len(SAME) :], strict=True):
        assert theirs["ok"] and theirs["values"][dest] == value, (argv, theirs)
        assert not ours_parse(version, argv)["ok"], argv


@pytest.mark.parametrize("version", VERSIONS)
def test_flag_table_tool_reproduces_the_shipped_table(version):
    vllm_venv(version)
    proc = subprocess.run(
        [str(REPO / "scripts" / "flag-table"), "--print", version], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == (REPO / "ascend_fleet" / "data" / f"vllm-{version}-serve-flags.json").read_text()
    if version == "0.21.0":  # the table the project shipped before the tool existed
        reference = REPO.parent / "shared" / "reference" / "vllm-0.21.0-serve-flags.json"
        if reference.is_file():
            assert proc.stdout == reference.read_text()


def test_flag_table_tool_refuses_a_bad_version():
    proc = subprocess.run([str(REPO / "scripts" / "flag-table"), "0.23"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "usage: scripts/flag-table" in proc.stderr and "got '0.23'" in proc.stderr


def _recipe_copy(tmp_path: Path, rid: str, container) -> str:
    data = yaml.safe_load(Path(load_recipe(RECIPE)["_file"]).read_text())
    data["id"] = rid
    data["container"] = container
    (tmp_path / f"{rid.replace('@', '_')}.yml").write_text(yaml.safe_dump(data))
    return rid


@pytest.mark.parametrize("recipe", ["dsv4-flash-w8a8-mtp@v0.21.0rc1", RECIPE])
def test_shipped_recipes_run_unprivileged(recipe):
    """Neither tutorial's docker run has --privileged (v0.23.0: lines 91-121, 134-156)."""
    plan = plan_with("a3-1p1d", host_vars={h: {"fleet_recipe": recipe} for h in ("prefill-0", "decode-0")})
    assert plan["errors"] == []
    assert plan["container"] == {"privileged": False, "reason": ""}
    assert not [w for w in plan["warnings"] if "privileged" in w]


def test_a_privileged_recipe_says_why_and_how_to_turn_it_off(tmp_path):
    why = "tutorial line 94: docker run --privileged=true"
    rid = _recipe_copy(tmp_path, "test-privileged@v0.23.0", {"privileged": True, "reason": why})
    hv = {"fleet_recipe": rid, "fleet_recipe_paths": [str(tmp_path)]}
    plan = plan_with("a3-1p1d", host_vars={"prefill-0": hv, "decode-0": hv})
    assert plan["errors"] == []
    assert plan["container"] == {"privileged": True, "reason": why}
    [warning] = [w for w in plan["warnings"] if "privileged" in w]
    assert why in warning and "serve_privileged: false" in warning


@pytest.mark.parametrize(
    ("container", "message"),
    [({"privileged": True}, "without a reason"), ({"privileged": "yes"}, "true or false"), ({"priv": 1}, "expected")],
)
def test_a_malformed_container_block_is_refused(tmp_path, container, message):
    rid = _recipe_copy(tmp_path, "test-bad-container@v0.23.0", container)
    plan = plan_with("a3-single", host_vars={"node-0": {"fleet_recipe": rid, "fleet_recipe_paths": [str(tmp_path)]}})
    assert any(message in e and "container" in e for e in plan["errors"]), plan["errors"]


@pytest.mark.parametrize(
    ("version", "message"),
    [
        ("0.21.0", "vllm serve: error: unrecognized arguments: --spec-tokens"),  # vLLM 0.21.0 has no such flag
        ("0.23.0", "--max-model-len: invalid"),  # 0.23.0 has it: the next flag is the first error
    ],
)
def test_engine_standin_checks_flags_of_the_version_it_impersonates(tmp_path, version, message):
    """lab/engine/build writes VERSION beside the stand-in; its flag table decides."""
    standin = tmp_path / "lab" / "engine" / "standin"
    standin.mkdir(parents=True)
    (standin / "vllm.py").write_text((REPO / "lab" / "engine" / "standin" / "vllm.py").read_text())
    (standin / "VERSION").write_text(version + "\n")
    (tmp_path / "ascend_fleet").symlink_to(REPO / "ascend_fleet")
    run = lambda *a: subprocess.run(  # noqa: E731  (local helper)
        ["python3", str(standin / "vllm.py"), *a], capture_output=True, text=True, timeout=60, check=False
    )
    assert run("--version").stdout.strip() == version
    proc = run("serve", "/m", "--spec-tokens", "1", "--max-model-len", "lots")
    assert proc.returncode == 2
    assert message in proc.stderr


def test_overrides_are_read_with_the_recipes_table():
    """A switch only vLLM 0.23.0 has, set to true by an override, renders as a bare switch."""
    hv = {"fleet_recipe": RECIPE, "fleet_serve_overrides": {"--use-fp64-gumbel": True}}
    plan = plan_with("a3-single", host_vars={"node-0": hv})
    assert plan["errors"] == []
    hv["fleet_recipe"] = "dsv4-flash-w8a8-mtp@v0.21.0rc1"  # 0.21.0 has no such flag
    assert any("--use-fp64-gumbel" in e for e in plan_with("a3-single", host_vars={"node-0": hv})["errors"])
