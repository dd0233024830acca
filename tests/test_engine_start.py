"""The engine start: the tutorial's shell environment (recipe shell_env) and kept CANN logs.

No lab needed: the recipe's ``shell_env`` is checked against the Dockerfile lines it comes
from (run under bash as the image build ran them), the plan carries it for every host,
and the serve role's engine-start.sh is rendered with Ansible and run under bash.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ascend_fleet import shellenv
from ascend_fleet.recipes import load_recipe
from tests.conftest import REPO, TOPOLOGIES, load_plan, run_playbook

# The ~/.bashrc lines of the images, verbatim (vllm-project/vllm-ascend, tag v0.21.0rc1):
# Dockerfile lines 76-77 (A2) and Dockerfile.a3 lines 78-79 (A3), the same two lines.
DOCKERFILE_RUN = [
    'echo "export LD_PRELOAD=/usr/lib/$(uname -m)-linux-gnu/libjemalloc.so.2:$LD_PRELOAD" >> ~/.bashrc',
    'echo "export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:/usr/local/lib" >> ~/.bashrc',
]
# The CANN base image's lines before them (Ascend/cann-container-image, 9.0.0 Dockerfiles).
CANN_SOURCES = [
    "/usr/local/Ascend/ascend-toolkit/set_env.sh",
    "/usr/local/Ascend/cann-9.0.0/share/info/ascendnpu-ir/bin/set_env.sh",
    "/usr/local/Ascend/nnal/atb/set_env.sh",
]
# An image environment like CANN's (ENV LD_LIBRARY_PATH=..., no LD_PRELOAD).
IMAGE_ENV = [
    "PATH=/usr/local/python3.12.13/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LD_LIBRARY_PATH=/usr/local/Ascend/driver/lib64:/usr/local/Ascend/driver/lib64/common:/usr/local/python3.12.13/lib",
]
GOARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def built_bashrc(tmp_path: Path) -> list[str]:
    """Run the Dockerfiles' RUN lines under bash in the image's environment (a build)."""
    home = tmp_path / "build-home"
    home.mkdir()
    env = {**shellenv.image_environment(IMAGE_ENV), "HOME": str(home)}
    script = "".join(f"echo 'source {path}' >> ~/.bashrc\n" for path in CANN_SOURCES)
    script += "\n".join(DOCKERFILE_RUN) + "\n"
    subprocess.run(["bash", "-c", script], env=env, check=True)
    return (home / ".bashrc").read_text().splitlines()


@pytest.mark.parametrize("kind", ["a2", "a3"])
def test_recipe_shell_env_is_the_images_bashrc(kind, tmp_path):
    entry = shellenv.for_kind(load_recipe(), kind)
    # Each line names its source: the Dockerfile line of the tag.
    dockerfile = {"a2": "Dockerfile", "a3": "Dockerfile.a3"}[kind]
    lines = {"a2": (76, 77), "a3": (78, 79)}[kind]
    assert [e[2] for e in entry["export"]] == [f"vllm-ascend v0.21.0rc1 {dockerfile}:{n}" for n in lines]
    assert [s[0] for s in entry["source"]] == CANN_SOURCES
    ours = shellenv.bashrc_lines(entry, IMAGE_ENV, GOARCH[platform.machine()])
    assert ours == built_bashrc(tmp_path)
    assert ours[-1].endswith(":/usr/local/lib")
    assert ours[-2] == f"export LD_PRELOAD=/usr/lib/{platform.machine()}-linux-gnu/libjemalloc.so.2:"


def test_build_time_expansion_follows_the_image_architecture():
    entry = shellenv.for_kind(load_recipe(), "a3")
    lines = shellenv.bashrc_lines(entry, ["LD_LIBRARY_PATH=/a b"], "arm64")
    assert lines[-2:] == [
        "export LD_PRELOAD=/usr/lib/aarch64-linux-gnu/libjemalloc.so.2:",
        "export LD_LIBRARY_PATH='/a b:/usr/local/lib'",  # an image value stays one word
    ]
    with pytest.raises(shellenv.ShellEnvError, match="architecture 'mips'"):
        shellenv.bashrc_lines(entry, [], "mips")


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"a3": {}}, "no entry for hardware kind 'a2'"),
        ({"a2": {"exports": []}}, "unknown keys"),
        ({"a2": {"export": [["LD_LIBRARY_PATH", "x"]]}}, r"expected \[NAME, value, origin\]"),
        ({"a2": {"export": [["1X", "x", "o"]]}}, "not a variable name"),
        ({"a2": {"export": [["X", "$(id)", "o"]]}}, "may only expand"),
        ({"a2": {"export": [["X", "`id`", "o"]]}}, "may only expand"),
        ({"a2": {"source": [["set_env.sh; id", "o"]]}}, "not an absolute path"),
    ],
)
def test_malformed_shell_env_is_refused(block, message):
    with pytest.raises(shellenv.ShellEnvError, match=message):
        shellenv.for_kind({"id": "x", "shell_env": block}, "a2")


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_plan_carries_the_shell_env_of_each_host(rendered, topology):
    recipe = load_recipe()
    for host, entry in load_plan(rendered[topology])["hosts"].items():
        assert entry["shell_env"] == shellenv.for_kind(recipe, entry["hw_kind"]), host
        assert [e[0] for e in entry["shell_env"]["export"]] == ["LD_PRELOAD", "LD_LIBRARY_PATH"]


# ---- engine-start.sh, rendered by Ansible and run under bash ------------------------------

LAUNCH = """#!/bin/bash
python3 -c 'import json, os; print(json.dumps(dict(os.environ)))' > "$(dirname "$0")/env.json"
mkdir -p "$ASCEND_HOME_FOR_TEST/log/debug/plog"
echo "[INFO] started" > "$ASCEND_HOME_FOR_TEST/log/debug/plog/plog-$$.log"
"""


@pytest.fixture(scope="module")
def render_start(tmp_path_factory):
    """Render roles/serve/templates/engine-start.sh.j2 for a host of a3-1p1d (keep = N)."""
    base = tmp_path_factory.mktemp("engine-start")

    def render(keep: int) -> Path:
        out = base / f"keep{keep}"
        (out / "etc").mkdir(parents=True)
        (out / "home").mkdir()
        (out / "etc" / "launch.sh").write_text(LAUNCH)
        plan = {"recipe": "dsv4-flash-w8a8-mtp@v0.21.0rc1",
                "hosts": {"decode-0": {"hw_kind": "a3", "role": "decode",
                                       "shell_env": shellenv.for_kind(load_recipe(), "a3")}}}
        play = [{
            "hosts": "localhost", "gather_facts": False, "connection": "local",
            "vars": {
                "fleet_plan": plan, "serve_host": plan["hosts"]["decode-0"], "inventory_hostname": "decode-0",
                "image_ref": "registry.example/ascend/vllm-ascend:v0.21.0rc1-a3",
                "serve_image": {"Config": {"Env": IMAGE_ENV}, "Architecture": GOARCH[platform.machine()]},
                "serve_config_dir": str(out / "etc"), "serve_entry": "launch.sh",
                "serve_ascend_home": str(out / "home"), "serve_ascend_log_dir": "/var/log/x",
                "serve_ascend_log_keep": keep, "ansible_python_interpreter": sys.executable,
            },
            "tasks": [{"ansible.builtin.template": {
                "src": str(REPO / "roles" / "serve" / "templates" / "engine-start.sh.j2"),
                "dest": str(out / "etc" / "engine-start.sh"), "mode": "0755"}}],
        }]
        (out / "play.yml").write_text(yaml.safe_dump(play))
        run_playbook(str(out / "play.yml"), "-i", "localhost,")
        return out

    return render


def start(out: Path) -> dict:
    env = {"PATH": os.environ["PATH"], "HOME": str(out / "home"), "ASCEND_HOME_FOR_TEST": str(out / "home"),
           **shellenv.image_environment(IMAGE_ENV[1:])}
    proc = subprocess.run(["bash", str(out / "etc" / "engine-start.sh")], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    # The CANN set_env.sh files are not on this machine: bash says so and goes on, as in
    # a ~/.bashrc; the launch script still ran.
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "etc" / "env.json").read_text())


def test_engine_start_applies_the_bashrc_lines(render_start, tmp_path):
    out = render_start(5)
    text = (out / "etc" / "engine-start.sh").read_text()
    assert "LD_LIBRARY_PATH: vllm-ascend v0.21.0rc1 Dockerfile.a3:79" in text
    env = start(out)
    assert env["LD_LIBRARY_PATH"] == shellenv.image_environment(IMAGE_ENV)["LD_LIBRARY_PATH"] + ":/usr/local/lib"
    assert env["LD_PRELOAD"] == f"/usr/lib/{platform.machine()}-linux-gnu/libjemalloc.so.2:"
    # What the tutorial's interactive shell would have: the built ~/.bashrc, sourced.
    home = tmp_path / "h"
    home.mkdir()
    (home / ".bashrc").write_text("\n".join(built_bashrc(tmp_path)) + "\n")
    shell = subprocess.run(
        ["bash", "-c", "source ~/.bashrc 2>/dev/null; printf '%s\\n%s\\n' \"$LD_PRELOAD\" \"$LD_LIBRARY_PATH\""],
        env={"HOME": str(home), "PATH": os.environ["PATH"], **shellenv.image_environment(IMAGE_ENV[1:])},
        capture_output=True, text=True, check=True).stdout.splitlines()
    assert [env["LD_PRELOAD"], env["LD_LIBRARY_PATH"]] == shell


def test_engine_start_keeps_the_previous_logs(render_start):
    out = render_start(2)
    log = out / "home" / "log"
    start(out)  # first start: nothing to move aside
    assert [p.name for p in (out / "home").iterdir()] == ["log"]
    first = sorted((log / "debug" / "plog").iterdir())
    assert len(first) == 1
    for _ in range(3):
        start(out)
    names = sorted(p.name for p in (out / "home").iterdir())
    # this start's log plus the newest two earlier ones (serve_ascend_log_keep: 2)
    assert names[0] == "log" and len(names) == 3, names
    assert all(n.startswith("log.") for n in names[1:])
    kept = [p for n in names[1:] for p in (out / "home" / n / "debug" / "plog").iterdir()]
    assert len(kept) == 2 and first[0].name not in {p.name for p in kept}  # the oldest went


def test_engine_start_keep_zero_deletes_like_the_tutorial(render_start):
    out = render_start(0)
    start(out)
    start(out)
    assert [p.name for p in (out / "home").iterdir()] == ["log"]
