"""The service's API key (fleet_api_key) never lands in a rendered file, plan.json or a
message, and the rendered scripts hand it to vLLM (VLLM_API_KEY) and the PD proxy
(OPENAI_API_KEY) from the root-only key file. No lab needed: render.yml on the controller
and the rendered scripts run under bash with stub ``vllm`` / ``python3`` commands.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ascend_fleet.topology import Report, check_types
from tests.conftest import run_playbook

KEY = "sk-fleet-0a9b8c7d6e5f4a3b2c1d"


@pytest.fixture(scope="module")
def rendered_with_key(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("render-key")
    proc = run_playbook("playbooks/render.yml", "-i", "a3-1p1d", "-e", f"fleet_render_dir={out}",
                        "-e", f"fleet_api_key={KEY}")
    assert KEY not in proc.stdout + proc.stderr
    assert "unknown variable fleet_api_key" not in proc.stdout
    return out


def test_the_key_is_in_no_rendered_file(rendered_with_key):
    files = [p for p in rendered_with_key.rglob("*") if p.is_file()]
    assert any(p.name == "plan.json" for p in files)
    leaked = [str(p) for p in files if KEY in p.read_text(errors="replace")]
    assert leaked == []


def stub_bin(tmp: Path) -> Path:
    """vllm and python stand-ins that record their environment's keys and their argv."""
    bindir = tmp / "bin"
    bindir.mkdir()
    for name, out in (("vllm", "vllm"), ("python", "proxy"), ("python3", "proxy")):
        stub = bindir / name
        stub.write_text(
            "#!/bin/bash\n"
            f'echo "argv: $*" > "{tmp}/{out}.out"\n'
            f'echo "VLLM_API_KEY=${{VLLM_API_KEY-unset}}" >> "{tmp}/{out}.out"\n'
            f'echo "OPENAI_API_KEY=${{OPENAI_API_KEY-unset}}" >> "{tmp}/{out}.out"\n'
        )
        stub.chmod(0o755)
    return bindir


@pytest.mark.parametrize("host", ["prefill-0", "decode-0"])
def test_rendered_scripts_export_the_key_from_the_key_file(rendered_with_key, tmp_path, host):
    hostdir = rendered_with_key / host
    (hostdir / "secrets").mkdir(exist_ok=True)
    (hostdir / "secrets" / "api-key").write_text(KEY)
    bindir = stub_bin(tmp_path)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    text = (hostdir / "run_dp_template.sh").read_text()
    assert f'export VLLM_API_KEY="$(cat {hostdir}/secrets/api-key)"' in text
    # the launcher's per-rank script: vllm gets the key in its environment, not its argv
    subprocess.run(["bash", str(hostdir / "run_dp_template.sh"), "0", "7100", "2", "0", "127.0.0.1",
                    "12321", "1"], env=env, check=True, timeout=60, capture_output=True)
    out = (tmp_path / "vllm.out").read_text()
    assert f"VLLM_API_KEY={KEY}" in out
    assert KEY not in out.splitlines()[0]  # argv
    if host == "prefill-0":  # the proxy host: proxy.sh gives the proxy OPENAI_API_KEY
        subprocess.run(["bash", str(hostdir / "proxy.sh")], env=env, check=True, timeout=60, capture_output=True)
        out = (tmp_path / "proxy.out").read_text()
        assert f"OPENAI_API_KEY={KEY}" in out and KEY not in out.splitlines()[0]


def test_without_a_key_no_script_mentions_one(tmp_path):
    run_playbook("playbooks/render.yml", "-i", "a3-1p1d", "-e", f"fleet_render_dir={tmp_path}")
    for path in tmp_path.rglob("*.sh"):
        text = path.read_text()
        assert "VLLM_API_KEY" not in text and "OPENAI_API_KEY" not in text and "api-key" not in text


def test_a_badly_typed_secret_is_reported_without_its_value():
    rep = Report()
    check_types("node-0", {"fleet_api_key": ["sk-listed-secret"], "weights_token": {"t": "hub-secret"}},
                {"weights_token": (str,)}, rep)
    text = "\n".join(rep.errors)
    assert "fleet_api_key" in text and "weights_token" in text
    assert "sk-listed-secret" not in text and "hub-secret" not in text
