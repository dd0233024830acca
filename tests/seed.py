"""Read the tutorial (the project's spec) and run scripts to see what they really do.

``tests/data/tutorial-deepseek-v4-flash.txt`` is the vllm-ascend DeepSeek-V4-Flash
tutorial rendered for v0.21.0rc1 (vllm-project/vllm-ascend, Apache-2.0). This module
cuts out its serve scripts and launcher commands, and ``run_script`` executes a script
under bash with a stand-in ``vllm`` that records its argv and environment, so the
tutorial's scripts and ours are compared by what bash actually hands to vLLM.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parent / "data" / "tutorial-deepseek-v4-flash.txt"

# Order of the serve scripts in the tutorial (see reference facts: 5.1 A2 then A3;
# 5.2.1 A3 prefill, decode; 5.2.2 A2 prefill, decode).
SCRIPT_NAMES = ["a2-single", "a3-single", "a3-prefill", "a3-decode", "a2-prefill", "a2-decode"]
LAUNCH_NAMES = ["a3-prefill", "a3-decode", "a2-prefill", "a2-decode"]
STARTS = ("export OMP_PROC_BIND", "nic_name=", "unset ftp_proxy")


def _complete(text: str) -> bool:
    if text.rstrip().endswith("\\"):
        return False
    try:
        shlex.split(text)
    except ValueError:
        return False
    return True


def tutorial_scripts() -> dict[str, str]:
    lines = TUTORIAL.read_text().splitlines()
    blocks: list[str] = []
    i = 0
    while i < len(lines):
        if lines[i].strip().startswith(STARTS):
            j = next(k for k in range(i, len(lines)) if lines[k].strip().startswith("vllm serve"))
            k = j
            while not _complete("\n".join(x.strip() for x in lines[j : k + 1])):
                k += 1
            blocks.append("\n".join(x.strip() for x in lines[i : k + 1]) + "\n")
            i = k + 1
        else:
            i += 1
    assert len(blocks) == len(SCRIPT_NAMES), f"expected 6 serve scripts, found {len(blocks)}"
    return dict(zip(SCRIPT_NAMES, blocks, strict=True))


def tutorial_launch_commands() -> dict[str, list[str]]:
    found = [
        shlex.split(line.strip())
        for line in TUTORIAL.read_text().splitlines()
        if line.strip().startswith("python launch_online_dp.py")
    ]
    assert len(found) == len(LAUNCH_NAMES), f"expected 4 launcher commands, found {len(found)}"
    return dict(zip(LAUNCH_NAMES, found, strict=True))


def fill_placeholders(script: str, node_ip: str, nic: str) -> str:
    """Do what the tutorial asks the reader to do: put in the node's NIC and address."""
    out = []
    for line in script.splitlines():
        if line.startswith("nic_name="):
            line = f'nic_name="{nic}"'
        elif line.startswith("local_ip="):
            line = f"local_ip={node_ip}"
        out.append(line)
    return "\n".join(out) + "\n"


def export_lines(script: str) -> list[str]:
    return [line.strip() for line in script.splitlines() if line.strip().startswith("export ")]


@dataclass
class Run:
    argv: list[str]
    env: dict[str, str]


CAPTURE = textwrap.dedent(
    """\
    #!/usr/bin/env python3
    import json, os, sys
    with open(os.environ["VLLM_CAPTURE"], "w") as fh:
        json.dump({"argv": sys.argv[1:], "env": dict(os.environ)}, fh)
    """
)


def run_script(script: str, args: list[str], workdir: Path) -> Run:
    """Run ``script`` with bash; return the argv and environment ``vllm`` received."""
    workdir.mkdir(parents=True, exist_ok=True)
    bindir = workdir / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "vllm").write_text(CAPTURE)
    (bindir / "vllm").chmod(0o755)
    path = workdir / "script.sh"
    path.write_text(script)
    capture = workdir / "capture.json"
    env = {
        "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(workdir / "home"),
        "VLLM_CAPTURE": str(capture),
    }
    proc = subprocess.run(["bash", str(path), *args], env=env, cwd=workdir, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"script failed: {proc.stderr}"
    data = json.loads(capture.read_text())
    assert data["argv"][0] == "serve", data["argv"]
    env_out = {k: v for k, v in data["env"].items() if k not in ("VLLM_CAPTURE", "PWD", "SHLVL", "_")}
    return Run(argv=data["argv"][1:], env=env_out)


def exported_names(script: str) -> list[str]:
    return [re.match(r"export\s+(\w+)=", line).group(1) for line in export_lines(script)]
