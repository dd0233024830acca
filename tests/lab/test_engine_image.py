"""The engine image (lab/engine/build): built for real, then ``vllm serve`` run inside it.

Marked ``lab``: needs root, Docker Engine and debootstrap (first build: PyPI and Debian's
mirror too). The container runs as the tutorial's do: ``--net=host``, NPUs passed with
``--device`` (here /dev/null mapped to /dev/davinciN: a character device, as Docker needs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "lab" / "engine" / "build"
sys.path.insert(0, str(REPO / "lab" / "hub"))
import repo  # noqa: E402  (lab/hub/repo.py: the stand-in checkpoint generator)

pytestmark = pytest.mark.lab
MODEL_PATH = "/root/.cache/modelscope/hub/models/vllm-ascend/DeepSeek-V4-Flash-w8a8-mtp"
PROXY = ("/vllm-workspace/vllm-ascend/examples/disaggregated_prefill_v1/"
         "load_balance_proxy_server_example.py")
LAUNCHER_DIR = "/vllm-workspace/vllm-ascend/examples/external_online_dp"


def docker_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "building the engine image needs root (debootstrap)"
    for tool in ("docker", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        return "Docker Engine is not running"
    return None


@pytest.fixture(scope="module")
def image() -> str:
    reason = docker_unavailable()
    if reason:
        pytest.skip(reason)
    proc = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=1800,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tag = proc.stdout.strip()
    assert tag.startswith("ascend-fleet-lab/vllm-ascend:")
    return tag


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_build_is_cached_by_content(image):
    again = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=600,
                           check=False)
    assert again.returncode == 0
    assert again.stdout.strip() == image
    assert "is up to date" in again.stderr


def test_image_has_python_and_the_real_examples(image):
    script = (
        "python --version && vllm --version && "
        f"python {PROXY} --help >/dev/null && "
        f"cd {LAUNCHER_DIR} && python launch_online_dp.py --help >/dev/null && "
        "test -f run_dp_template.sh && hostname -I >/dev/null && echo ok"
    )
    proc = docker("run", "--rm", image, "bash", "-c", script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["Python", "3.11.2", "0.21.0", "ok"]
    bad = docker("run", "--rm", image, "vllm", "serve", MODEL_PATH, "--enable-dsa-cp")
    assert bad.returncode == 2
    assert "unrecognized arguments: --enable-dsa-cp" in bad.stderr


def test_vllm_serve_in_the_container(image, tmp_path):
    model = Path(repo.generate(tmp_path, "Eco-Tech/DeepSeek-V4-Flash-w8a8-mtp", 4)["dir"])
    name = f"lab-engine-test-{uuid.uuid4().hex[:8]}"
    port = 18000 + uuid.uuid4().int % 2000
    proc = docker(
        "run", "-d", "--name", name, "--net=host",
        "--device", "/dev/null:/dev/davinci0", "--device", "/dev/null:/dev/davinci1",
        "-v", f"{model}:{MODEL_PATH}:ro", "-e", "ASCEND_RT_VISIBLE_DEVICES=0,1",
        image, "vllm", "serve", MODEL_PATH, "--host", "127.0.0.1", "--port", str(port),
        "--served-model-name", "dsv4", "--tensor-parallel-size", "2", "--quantization", "ascend",
    )
    assert proc.returncode == 0, proc.stderr
    try:
        url = f"http://127.0.0.1:{port}"
        end = time.monotonic() + 120
        while True:
            state = docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip()
            assert state == "true", docker("logs", name).stdout
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except (OSError, urllib.error.URLError):
                assert time.monotonic() < end, docker("logs", name).stdout
                time.sleep(0.5)
        body = json.dumps({"model": "dsv4", "max_tokens": 256, "temperature": 0,
                           "messages": [{"role": "user", "content": "Who are you?"}]}).encode()
        req = urllib.request.Request(f"{url}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(req, timeout=30).read())
        assert answer["choices"][0]["message"]["content"].startswith("I am DeepSeek-V4-Flash")
        logs = docker("logs", name).stdout
        assert "NPUs in use: [0, 1]" in logs
        assert "Application startup complete." in logs
    finally:
        docker("rm", "-f", name)


def test_missing_device_in_the_container(image, tmp_path):
    model = Path(repo.generate(tmp_path, "Eco-Tech/DeepSeek-V4-Flash-w8a8-mtp", 1)["dir"])
    proc = docker("run", "--rm", "--device", "/dev/null:/dev/davinci0",
                  "-v", f"{model}:{MODEL_PATH}:ro", "-e", "ASCEND_RT_VISIBLE_DEVICES=0,1",
                  image, "vllm", "serve", MODEL_PATH, "--tensor-parallel-size", "2")
    assert proc.returncode == 1
    assert "/dev/davinci1 does not exist" in proc.stderr
