"""The tutorial's facts (the project's spec), and running scripts to see what they really do.

The spec is the vllm-ascend DeepSeek-V4-Flash tutorial rendered for v0.21.0rc1
(vllm-project/vllm-ascend, Apache-2.0). The tests do not carry a copy of it: they read
``tests/data/tutorial-facts.yml``, the facts they need (each script's export lines and
``vllm serve`` flags, each launcher command), every fact with its section and line in the
tutorial. ``derive_facts`` re-derives the same facts from the tutorial's text, and
``test_render_seed.py`` asserts both agree wherever the text is available (beside the
checkout, ``../shared/seed/000_32d5c206216eebd8.txt``), so the data file cannot drift.
Regenerate it after a tutorial change with ``python -m tests.seed > tests/data/tutorial-facts.yml``
and review the diff.

``run_script`` executes a script under bash with a stand-in ``vllm`` that records its argv
and environment, so the tutorial's scripts and ours are compared by what bash actually
hands to vLLM.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
FACTS = Path(__file__).resolve().parent / "data" / "tutorial-facts.yml"
SEED_NAME = "000_32d5c206216eebd8.txt"
# In CI the shared folder sits beside the checkout.
SEED_TEXT = REPO.parent / "shared" / "seed" / SEED_NAME

# Order of the serve scripts in the tutorial (5.1 A2 then A3; 5.2.1 A3 prefill, decode;
# 5.2.2 A2 prefill, decode), and of the launcher commands (5.2.1 P, D; 5.2.2 P, D).
SCRIPT_NAMES = ["a2-single", "a3-single", "a3-prefill", "a3-decode", "a2-prefill", "a2-decode"]
LAUNCH_NAMES = ["a3-prefill", "a3-decode", "a2-prefill", "a2-decode"]
STARTS = ("export OMP_PROC_BIND", "nic_name=", "unset ftp_proxy")
# A section heading: rendered text ("5.2.1 A3 ... #") or Markdown ("#### 5.2.1 A3 ...").
HEADING = re.compile(r"^(?:#+\s+(\d+(?:\.\d+)*)\s.*|(\d+(?:\.\d+)*) .*#)$")
# The v0.23.0 tutorial (tests/data, the file at the vllm-ascend tag v0.23.0, Apache-2.0):
# same scripts in the same order, plus Ascend 950DT blocks (None: not deployed here).
V0230_TEXT = Path(__file__).resolve().parent / "data" / "vllm-ascend-v0.23.0-DeepSeek-V4-Flash.md"
V0230_SCRIPT_NAMES = [
    "a2-single",
    "a3-single",
    None,
    "a3-prefill",
    "a3-decode",
    "a2-prefill",
    "a2-decode",
    None,
    None,
]


# ---- deriving the facts from the tutorial's text ----------------------------------------


def _complete(text: str) -> bool:
    if text.rstrip().endswith("\\"):
        return False
    try:
        shlex.split(text)
    except ValueError:
        return False
    return True


def _sections(lines: list[str]) -> list[str]:
    """The section number each line belongs to."""
    current, out = "", []
    for line in lines:
        m = HEADING.match(line.strip())
        if m:
            current = m.group(1) or m.group(2)
        out.append(current)
    return out


def _serve_tokens(numbered: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Shell words of a (multi-line) command, each with the line it starts on."""
    tokens: list[tuple[int, str]] = []
    buf, start = "", 0
    for ln, raw in numbered:
        piece = raw.strip()
        if piece.endswith("\\"):
            piece = piece[:-1]
        buf, start = (buf + "\n" + piece, start) if buf else (piece, ln)
        try:
            words = shlex.split(buf)
        except ValueError:
            continue  # inside a quoted value that goes on
        tokens.extend((start, w) for w in words)
        buf = ""
    return tokens


def _flags(tokens: list[tuple[int, str]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(tokens):
        ln, tok = tokens[i]
        assert tok.startswith("--"), f"line {ln}: expected a flag, got {tok!r}"
        entry: dict[str, Any] = {"line": ln}
        if "=" in tok:
            tok, value = tok.split("=", 1)
            i += 1
        elif i + 1 < len(tokens) and not tokens[i + 1][1].startswith("--"):
            value = tokens[i + 1][1]
            i += 2
        else:
            value = None
            i += 1
        entry["flag"] = tok
        if value is not None:
            if value.lstrip().startswith("{"):
                entry["json"] = json.loads(value)
            else:
                entry["value"] = value
        out.append(entry)
    return out


def derive_facts(text: str, script_names: list[str | None] | None = None) -> dict[str, Any]:
    """The facts the tests need, cut out of the tutorial's text (line numbers 1-based).

    ``script_names`` names the serve scripts in the order they appear (None: skip one)."""
    script_names = script_names or SCRIPT_NAMES
    lines = text.splitlines()
    section = _sections(lines)
    blocks: list[tuple[int, int]] = []
    i = 0
    while i < len(lines):
        if lines[i].strip().startswith(STARTS):
            j = next(k for k in range(i, len(lines)) if lines[k].strip().startswith("vllm serve"))
            k = j
            while not _complete("\n".join(x.strip() for x in lines[j : k + 1])):
                k += 1
            blocks.append((i, k))
            i = k + 1
        else:
            i += 1
    assert len(blocks) == len(script_names), f"expected {len(script_names)} serve scripts, found {len(blocks)}"
    scripts: dict[str, Any] = {}
    for name, (first, last) in zip(script_names, blocks, strict=True):
        if name is None:
            continue
        preamble, script_vars, exports, serve_lines = [], [], [], []
        for n in range(first, last + 1):
            stripped = lines[n].strip()
            if serve_lines or stripped.startswith("vllm serve"):
                serve_lines.append((n + 1, lines[n]))
            elif stripped.startswith("export "):
                exports.append({"line": n + 1, "text": stripped})
            elif stripped.startswith(("nic_name=", "local_ip=")):
                script_vars.append({"line": n + 1, "text": stripped})
            elif stripped:
                preamble.append({"line": n + 1, "text": stripped})
        tokens = _serve_tokens(serve_lines)
        assert [t for _, t in tokens[:2]] == ["vllm", "serve"], tokens[:3]
        scripts[name] = {
            "section": section[first],
            "lines": [first + 1, last + 1],
            "preamble": preamble,
            "script_vars": script_vars,
            "exports": exports,
            "serve": {"line": tokens[0][0], "model": tokens[2][1], "flags": _flags(tokens[3:])},
        }
    launchers: dict[str, Any] = {}
    found = [(n, line.strip()) for n, line in enumerate(lines) if line.strip().startswith("python launch_online_dp.py")]
    assert len(found) == len(LAUNCH_NAMES), f"expected {len(LAUNCH_NAMES)} launcher commands, found {len(found)}"
    for name, (n, line) in zip(LAUNCH_NAMES, found, strict=True):
        argv = shlex.split(line)
        launchers[name] = {
            "section": section[n],
            "line": n + 1,
            "command": argv[:2],
            "args": [list(pair) for pair in zip(argv[2::2], argv[3::2], strict=True)],
        }
    return {"scripts": scripts, "launchers": launchers}


def facts_yaml(text: str) -> str:
    head = textwrap.dedent(
        f"""\
        # Facts of the vllm-ascend DeepSeek-V4-Flash tutorial (v0.21.0rc1 rendering,
        # vllm-project/vllm-ascend, Apache-2.0) that the render tests compare against: per
        # serve script its section, line range, preamble, nic_name/local_ip lines, export lines
        # and vllm serve flags (JSON values as objects); per launcher command its argv. Every
        # entry carries its line in the tutorial's text ({SEED_NAME},
        # sha256 {hashlib.sha256(text.encode()).hexdigest()}).
        # Generated by `python -m tests.seed > tests/data/tutorial-facts.yml`; the test
        # test_facts_agree_with_the_tutorial_text re-derives them from the text and fails on any
        # difference. Script names: <hw>-<role> as in the recipe's profiles.
        """
    )
    body = yaml.dump(
        derive_facts(text),
        Dumper=_IndentedDumper,
        sort_keys=False,
        width=200,
        allow_unicode=True,
        default_flow_style=None,
    )
    return head + "---\n" + body


class _IndentedDumper(yaml.SafeDumper):
    """Block sequences indented under their key (yamllint's default style)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def load_facts() -> dict[str, Any]:
    return yaml.safe_load(FACTS.read_text())


# ---- scripts rebuilt from the facts -----------------------------------------------------


def tutorial_script(facts: dict[str, Any], name: str, deviations: list[dict[str, Any]] | None = None) -> str:
    """The tutorial's script ``name`` rebuilt from its facts (as bash would read it).

    ``deviations`` (the recipe's documented replacements of tutorial lines) are applied to
    the preamble, so a known, reviewed deviation is the only difference allowed.
    """
    s = facts["scripts"][name]
    out = []
    for item in s["preamble"]:
        text = item["text"]
        for dev in deviations or []:
            if name in dev.get("scripts", []) and text == dev["tutorial"]:
                text = dev["replacement"]
        out.append(text)
    out += [item["text"] for item in s["script_vars"]]
    out += [item["text"] for item in s["exports"]]
    words = ["vllm", "serve", shlex.quote(s["serve"]["model"])]
    for flag in s["serve"]["flags"]:
        words.append(flag["flag"])
        if "json" in flag:
            words.append(shlex.quote(json.dumps(flag["json"])))
        elif "value" in flag:
            value = flag["value"]
            words.append(value if re.fullmatch(r"\$\d", value) else shlex.quote(value))
    out.append(" ".join(words))
    return "\n".join(out) + "\n"


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


def run_script(script: str, args: list[str], workdir: Path, env_extra: dict[str, str] | None = None) -> Run:
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
        **(env_extra or {}),
    }
    proc = subprocess.run(["bash", str(path), *args], env=env, cwd=workdir, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"script failed: {proc.stderr}"
    data = json.loads(capture.read_text())
    assert data["argv"][0] == "serve", data["argv"]
    env_out = {k: v for k, v in data["env"].items() if k not in ("VLLM_CAPTURE", "PWD", "SHLVL", "_")}
    return Run(argv=data["argv"][1:], env=env_out)


def exported_names(script: str) -> list[str]:
    return [re.match(r"export\s+(\w+)=", line).group(1) for line in export_lines(script)]


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else SEED_TEXT
    sys.stdout.write(facts_yaml(source.read_text()))
