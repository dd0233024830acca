"""The lab's ``vllm`` stand-in, run as local processes on loopback (no Docker needed).

Fake NPUs are plain files in a temporary directory named by ASCEND_FLEET_LAB_DEVICE_DIR
(default /dev in the image). The PD test goes through the REAL proxy and the DP launcher
test through the REAL ``launch_online_dp.py``, both from vllm-ascend's PyPI sdist, fetched
once into lab/.cache/engine (those tests skip when PyPI cannot be reached).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VLLM = REPO / "lab" / "engine" / "standin" / "vllm.py"
sys.path.insert(0, str(REPO / "lab" / "hub"))
sys.path.insert(0, str(REPO / "lab" / "engine"))
import repo  # noqa: E402  (lab/hub/repo.py: the stand-in checkpoint generator)
import sources  # noqa: E402  (lab/engine/sources.py: sdist and Python deps)

# The tutorial's A3 PD flags that matter here, shortened to a 1P1D on loopback.
COMMON = ["--served-model-name", "dsv4", "--quantization", "ascend", "--trust-remote-code",
          "--enable-expert-parallel", "--max-model-len", "8192"]


# -- helpers -------------------------------------------------------------------------------------

def free_port(span: int = 1) -> int:
    """A port p such that p .. p+span-1 are free on loopback right now."""
    for _ in range(200):
        base = random.randrange(20000, 60000)
        socks = []
        try:
            for port in range(base, base + span):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def kv_config(role: str, port: int, engine: str, prefill=(1, 2), decode=(1, 1)) -> str:
    return json.dumps({
        "kv_connector": "MooncakeHybridConnector", "kv_role": role, "kv_port": str(port),
        "engine_id": engine,
        "kv_connector_extra_config": {
            "prefill": {"dp_size": prefill[0], "tp_size": prefill[1]},
            "decode": {"dp_size": decode[0], "tp_size": decode[1]},
        },
    })


class Engine:
    """One ``vllm serve`` process; its output goes to a log file."""

    def __init__(self, tmp: Path, model: Path, port: int, args: list[str], devices: str,
                 env: dict | None = None, name: str = "engine") -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = tmp / f"{name}-{port}.log"
        full_env = {**os.environ, "ASCEND_FLEET_LAB_DEVICE_DIR": str(tmp / "dev"),
                    "ASCEND_RT_VISIBLE_DEVICES": devices, "ASCEND_FLEET_LAB_KV_BIND": "127.0.0.1",
                    "VLLM_HOST_IP": "127.0.0.1", **(env or {})}
        with self.log_path.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(VLLM), "serve", str(model), "--host", "127.0.0.1",
                 "--port", str(port), *args],
                stdout=out, stderr=subprocess.STDOUT, env=full_env,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as resp:
                return resp.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def wait_healthy(self, limit: float = 60) -> None:
        end = time.monotonic() + limit
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"engine exited {self.proc.returncode}:\n{self.log}")
            if self.healthy():
                return
            time.sleep(0.2)
        raise AssertionError(f"engine not healthy after {limit}s:\n{self.log}")

    def wait_exit(self, limit: float = 60) -> int:
        return self.proc.wait(timeout=limit)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def post(url: str, body: dict, timeout: float = 30) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def chat(url: str, max_tokens: int = 256, stream: bool = False) -> tuple[int, bytes]:
    return post(f"{url}/v1/chat/completions", {
        "model": "dsv4", "messages": [{"role": "user", "content": "Who are you?"}],
        "max_tokens": max_tokens, "temperature": 0, "stream": stream})


def run_vllm(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(VLLM), *args], capture_output=True, text=True,
                          env=dict(os.environ, **env), timeout=60, check=False)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A small stand-in checkpoint, as the lab hub serves it."""
    manifest = repo.generate(tmp_path_factory.mktemp("models"),
                             "Eco-Tech/DeepSeek-V4-Flash-w8a8-mtp", size_mb=4)
    return Path(manifest["dir"])


@pytest.fixture
def tmp(tmp_path, monkeypatch) -> Path:
    """A temp dir with eight fake NPUs (plus the management devices) in tmp/dev, and
    Mooncake's library in tmp/lib on LD_LIBRARY_PATH (the image's ~/.bashrc adds its dir)."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "ascend_transport.so").touch()
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path / "lib"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # CANN's plog goes to ~/ascend/log
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in [f"davinci{i}" for i in range(8)] + ["davinci_manager", "devmm_svm", "hisi_hdc"]:
        (dev / name).touch()
    return tmp_path


@pytest.fixture
def engines():
    started: list = []
    yield started
    for item in reversed(started):
        item.stop()


@pytest.fixture(scope="module")
def vllm_ascend() -> Path:
    """vllm-ascend's examples from its PyPI sdist (proxy, DP launcher)."""
    try:
        return sources.examples()
    except (subprocess.CalledProcessError, StopIteration) as exc:
        pytest.skip(f"cannot fetch the vllm-ascend sdist from PyPI: {exc}")


@pytest.fixture(scope="module")
def pydeps() -> Path:
    """fastapi/httpx/uvicorn for the proxy (built for Python 3.11, as in the image)."""
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the proxy's dependencies are built for Python 3.11")
    try:
        return sources.pydeps()
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot install the proxy's dependencies from PyPI: {exc}")


# -- refusals before start -------------------------------------------------------------------------

@pytest.mark.parametrize("bad, message", [
    (["--enable-dsa-cp"], "vllm serve: error: unrecognized arguments: --enable-dsa-cp"),
    (["--tensor-parallel", "2"], "unknown flag '--tensor-parallel'"),
    (["--additional-config", "{enable_dsa_cp: true}"], "invalid JSON"),
    (["--port", "8900", "--port", "8901"], "given twice"),
    (["--max-model-len", "lots"], "--max-model-len"),
])
def test_bad_command_line_exits_2(model, tmp, bad, message):
    proc = run_vllm(["serve", str(model), *COMMON, *bad],
                    {"ASCEND_FLEET_LAB_DEVICE_DIR": str(tmp / "dev")})
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: vllm serve")
    assert "vllm serve: error:" in proc.stderr and message in proc.stderr


@pytest.mark.parametrize("breakage, message", [
    ("missing-shard", "No such file or directory"),
    ("truncated-shard", "SafetensorError"),
    ("no-config", "config.json"),
    ("no-quant-description", "quant_model_description.json"),
])
def test_incomplete_model_is_refused(model, tmp, engines, breakage, message):
    broken = tmp / "model"
    shutil.copytree(model, broken)
    shard = broken / "model-00003-of-00004.safetensors"
    if breakage == "missing-shard":
        shard.unlink()
    elif breakage == "truncated-shard":
        data = shard.read_bytes()
        shard.write_bytes(data[: len(data) // 2])
    elif breakage == "no-config":
        (broken / "config.json").unlink()
    else:
        (broken / "quant_model_description.json").unlink()
    engine = Engine(tmp, broken, free_port(), COMMON, devices="0")
    engines.append(engine)
    assert engine.wait_exit() == 1
    assert message in engine.log
    if breakage in ("missing-shard", "truncated-shard"):
        assert "model-00003-of-00004.safetensors" in engine.log
    assert "Application startup complete" not in engine.log


@pytest.mark.parametrize("devices, args, message", [
    ("0,9", ["-tp", "2"], "davinci9 does not exist"),
    ("0", ["-tp", "2"], "needs exactly 2 NPUs"),
    ("0,1,2,3", ["-tp", "2"], "needs exactly 2 NPUs"),
    ("0,1", ["-tp", "2", "-dp", "2"], "needs exactly 4 NPUs"),  # internal DP: dp x tp
])
def test_devices_are_checked(model, tmp, engines, devices, args, message):
    engine = Engine(tmp, model, free_port(), COMMON + args, devices=devices)
    engines.append(engine)
    assert engine.wait_exit() == 1
    assert message in engine.log


def test_kv_config_must_match_the_role(model, tmp, engines):
    # The prefill side says dp 4 x tp 4, but this producer runs dp 1 x tp 2.
    kv = kv_config("kv_producer", free_port(2), "0", prefill=(4, 4), decode=(1, 1))
    engine = Engine(tmp, model, free_port(), [*COMMON, "-tp", "2", "--kv-transfer-config", kv],
                    devices="0,1")
    engines.append(engine)
    assert engine.wait_exit() == 1
    assert "kv_connector_extra_config.prefill says dp_size=4, tp_size=4" in engine.log


def test_pd_rank_needs_mooncakes_library_path(model, tmp, engines):
    # Started without the image's ~/.bashrc: /usr/local/lib is not on LD_LIBRARY_PATH.
    kv = kv_config("kv_producer", free_port(2), "0", prefill=(1, 2))
    engine = Engine(tmp, model, free_port(), [*COMMON, "-tp", "2", "--kv-transfer-config", kv],
                    devices="0,1", env={"LD_LIBRARY_PATH": "/usr/local/Ascend/driver/lib64"})
    engines.append(engine)
    assert engine.wait_exit() == 1
    assert "from mooncake.engine import TransferEngine" in engine.log
    assert "ImportError: ascend_transport.so: cannot open shared object file: No such file or directory" in engine.log
    # A rank without a kv connector does not load Mooncake.
    single = Engine(tmp, model, free_port(), [*COMMON, "-tp", "2"], devices="0,1",
                    env={"LD_LIBRARY_PATH": ""}, name="single")
    engines.append(single)
    single.wait_healthy()


def test_every_start_writes_a_cann_plog(model, tmp, engines):
    engine = Engine(tmp, model, free_port(), [*COMMON, "-tp", "2"], devices="0,1")
    engines.append(engine)
    engine.wait_healthy()
    plogs = list((tmp / "home" / "ascend" / "log" / "debug" / "plog").glob(f"plog-{engine.proc.pid}_*.log"))
    assert len(plogs) == 1, plogs
    assert "aclInit" in plogs[0].read_text()


def test_recompute_scheduler_only_on_decode(model, tmp, engines):
    kv = kv_config("kv_producer", free_port(2), "0")
    extra = json.dumps({"recompute_scheduler_enable": True})
    args = [*COMMON, "-tp", "2", "--kv-transfer-config", kv, "--additional-config", extra]
    engine = Engine(tmp, model, free_port(), args, devices="0,1")
    engines.append(engine)
    assert engine.wait_exit() == 1
    assert "recompute_scheduler_enable" in engine.log and "kv_consumer" in engine.log


def test_kv_port_collision_fails(model, tmp, engines):
    kv_port = free_port(2)
    kv = ["--kv-transfer-config", kv_config("kv_producer", kv_port, "0")]
    first = Engine(tmp, model, free_port(), [*COMMON, "-tp", "2", *kv], devices="0,1", name="p0")
    engines.append(first)
    first.wait_healthy()
    # A second prefill instance with the same kv_port on the same host: its side channel
    # (kv_port + 0*2 + tp_rank) collides with the first one's.
    kv = ["--kv-transfer-config", kv_config("kv_producer", kv_port, "2")]
    second = Engine(tmp, model, free_port(), [*COMMON, "-tp", "2", *kv], devices="2,3", name="p1")
    engines.append(second)
    assert second.wait_exit() == 1
    assert "Address already in use" in second.log
    assert f"tcp://127.0.0.1:{kv_port}" in second.log
    assert first.healthy()


# -- serving -------------------------------------------------------------------------------------

def test_single_node_serves_openai_api(model, tmp, engines):
    engine = Engine(tmp, model, free_port(), [*COMMON, "-tp", "4", "-dp", "2"],
                    devices="0,1,2,3,4,5,6,7")
    engines.append(engine)
    engine.wait_healthy()
    log = engine.log
    assert f"Starting vLLM API server 0 on http://127.0.0.1:{engine.port}" in log
    assert "Application startup complete." in log
    assert "NPUs in use: [0, 1, 2, 3, 4, 5, 6, 7]" in log

    models = json.loads(urllib.request.urlopen(f"{engine.url}/v1/models").read())
    assert [m["id"] for m in models["data"]] == ["dsv4"]

    status, raw = chat(engine.url)
    answer = json.loads(raw)
    assert status == 200 and answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"].startswith("I am DeepSeek-V4-Flash")
    assert answer["choices"][0]["finish_reason"] == "stop"

    status, raw = chat(engine.url, max_tokens=3)
    short = json.loads(raw)
    assert short["usage"]["completion_tokens"] == 3
    assert short["choices"][0]["finish_reason"] == "length"

    status, raw = chat(engine.url, max_tokens=4, stream=True)
    events = [line for line in raw.decode().splitlines() if line.startswith("data: ")]
    assert status == 200 and events[-1] == "data: [DONE]"
    text = "".join(json.loads(e[6:])["choices"][0]["delta"].get("content") or ""
                   for e in events[:-1])
    assert text == "I am DeepSeek-V4-Flash, served"

    status, raw = post(f"{engine.url}/v1/completions",
                       {"model": "dsv4", "prompt": "Hello", "max_tokens": 2})
    assert status == 200 and json.loads(raw)["choices"][0]["text"] == "I am"

    status, raw = post(f"{engine.url}/v1/completions", {"model": "dsv3", "prompt": "x"})
    assert status == 404 and "does not exist" in raw.decode()


# -- external data parallel ----------------------------------------------------------------------

def dp_args(size: int, rank: int, rpc_port: int, address: str = "127.0.0.1") -> list[str]:
    return ["--data-parallel-size", str(size), "--data-parallel-rank", str(rank),
            "--data-parallel-address", address, "--data-parallel-rpc-port", str(rpc_port),
            "--tensor-parallel-size", "1"]


def test_dp_group_with_missing_rank_never_turns_healthy(model, tmp, engines):
    rpc = free_port()
    short = {"VLLM_ENGINE_READY_TIMEOUT_S": "4"}
    rank0 = Engine(tmp, model, free_port(), COMMON + dp_args(2, 0, rpc), devices="0",
                   env=short, name="rank0")
    engines.append(rank0)
    # Its port is bound early (as vLLM does) but it never answers /health.
    while rank0.proc.poll() is None:
        assert not rank0.healthy()
        time.sleep(0.3)
    assert rank0.proc.returncode != 0
    assert ("TimeoutError: Timed out waiting for engines to send initial message on input "
            "socket.") in rank0.log


def test_dp_rank_without_coordinator_times_out(model, tmp, engines):
    rank1 = Engine(tmp, model, free_port(), COMMON + dp_args(2, 1, free_port()), devices="0",
                   env={"VLLM_ENGINE_READY_TIMEOUT_S": "3"}, name="rank1")
    engines.append(rank1)
    assert rank1.wait_exit() != 0
    assert "Timed out waiting for engines to send initial message" in rank1.log


def test_dp_address_must_be_local(model, tmp, engines):
    # An address of no interface here (198.18.0.0/15, never routed): bind fails at once.
    rank0 = Engine(tmp, model, free_port(), COMMON + dp_args(2, 0, free_port(), "198.19.254.254"),
                   devices="0")
    engines.append(rank0)
    assert rank0.wait_exit() == 1
    assert "Cannot assign requested address" in rank0.log


def test_dp_group_forms_and_fails_together(model, tmp, engines):
    rpc = free_port()
    ranks = []
    for rank in range(3):
        engine = Engine(tmp, model, free_port(), COMMON + dp_args(3, rank, rpc),
                        devices=str(rank), name=f"rank{rank}")
        engines.append(engine)
        ranks.append(engine)
    for engine in ranks:
        engine.wait_healthy()
    assert "all 3 data parallel ranks are ready" in ranks[2].log
    # A duplicate rank is refused by the coordinator.
    dup = Engine(tmp, model, free_port(), COMMON + dp_args(3, 1, rpc), devices="3", name="dup")
    engines.append(dup)
    assert dup.wait_exit() == 1
    assert "already registered" in dup.log
    # So is a rank whose group size or tp differs from rank 0's.
    odd = Engine(tmp, model, free_port(), [*COMMON, *dp_args(4, 3, rpc)], devices="4",
                 name="odd")
    engines.append(odd)
    assert odd.wait_exit() == 1
    assert "runs with --data-parallel-size 4, the group has 3" in odd.log
    # One rank dies: the others go down with it (their collectives would fail).
    ranks[1].stop()
    assert ranks[0].wait_exit() != 0
    assert ranks[2].wait_exit() != 0


def test_real_launcher_starts_a_dp_group(model, tmp, vllm_ascend):
    """The sdist's launch_online_dp.py runs ./run_dp_template.sh once per local rank."""
    work = tmp / "launch"
    work.mkdir()
    shutil.copy2(vllm_ascend / sources.LAUNCHER, work)
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "vllm"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{VLLM}" "$@"\n')
    shim.chmod(0o755)
    # The tutorial's template, cut down: $1 devices, $2 port, $3 dp size, $4 rank,
    # $5 address, $6 rpc port, $7 tp size.
    (work / "run_dp_template.sh").write_text(
        "export ASCEND_RT_VISIBLE_DEVICES=$1\n"
        f"vllm serve {model} --host 127.0.0.1 --port $2 --data-parallel-size $3 "
        "--data-parallel-rank $4 --data-parallel-address $5 --data-parallel-rpc-port $6 "
        "--tensor-parallel-size $7 " + " ".join(COMMON) + "\n")
    start = free_port(2)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}",
               ASCEND_FLEET_LAB_DEVICE_DIR=str(tmp / "dev"))
    log = (tmp / "launcher.log").open("w")
    launcher = subprocess.Popen(
        [sys.executable, "launch_online_dp.py", "--dp-size", "2", "--tp-size", "2",
         "--dp-size-local", "2", "--dp-rank-start", "0", "--dp-address", "127.0.0.1",
         "--dp-rpc-port", str(free_port()), "--vllm-start-port", str(start)],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for port in (start, start + 1):
            end = time.monotonic() + 60
            while True:
                assert launcher.poll() is None, (tmp / "launcher.log").read_text()
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                    break
                except (OSError, urllib.error.URLError):
                    assert time.monotonic() < end, (tmp / "launcher.log").read_text()
                    time.sleep(0.3)
        text = (tmp / "launcher.log").read_text()
        assert "NPUs in use: [0, 1]" in text and "NPUs in use: [2, 3]" in text
        status, _raw = chat(f"http://127.0.0.1:{start + 1}", max_tokens=2)
        assert status == 200
    finally:
        os.killpg(launcher.pid, signal.SIGTERM)  # the launcher's own session: it and its ranks
        launcher.wait(timeout=20)
        log.close()


# -- PD disaggregation through the real proxy ------------------------------------------------------

class Proxy:
    """vllm-ascend's load_balance_proxy_server_example.py as a local process."""

    def __init__(self, tmp: Path, examples: Path, pydeps: Path, prefill: list[int],
                 decode: list[int]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "proxy.log"
        env = dict(os.environ, PYTHONPATH=str(pydeps), TMPDIR=str(tmp))
        env.pop("OPENAI_API_KEY", None)
        with self.log_path.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(examples / sources.PROXY), "--host", "127.0.0.1",
                 "--port", str(self.port),
                 "--prefiller-hosts", *["127.0.0.1"] * len(prefill),
                 "--prefiller-ports", *map(str, prefill),
                 "--decoder-hosts", *["127.0.0.1"] * len(decode),
                 "--decoder-ports", *map(str, decode)],
                env=env, stdout=out, stderr=subprocess.STDOUT)
        end = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                health = json.loads(urllib.request.urlopen(f"{self.url}/healthcheck").read())
                assert health["prefill_instances"] == len(prefill)
                break
            except (OSError, urllib.error.URLError):
                assert time.monotonic() < end, self.log_path.read_text()
                time.sleep(0.3)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def start_pd(tmp, model, engines, prefill_env=None) -> tuple[Engine, Engine, int]:
    p_kv, d_kv = free_port(2), free_port(1)
    p_args = [*COMMON, "-tp", "2", "--kv-transfer-config", kv_config("kv_producer", p_kv, "0")]
    prefill = Engine(tmp, model, free_port(), p_args, devices="0,1", env=prefill_env,
                     name="prefill")
    # The decode side as in the tutorial: consumer, recompute scheduler on.
    d_args = [*COMMON, "-tp", "1", "--kv-transfer-config", kv_config("kv_consumer", d_kv, "1"),
              "--additional-config", json.dumps({"recompute_scheduler_enable": True})]
    decode = Engine(tmp, model, free_port(), d_args, devices="2", name="decode")
    engines.extend([prefill, decode])
    prefill.wait_healthy()
    decode.wait_healthy()
    return prefill, decode, p_kv


def test_pd_pair_answers_through_the_real_proxy(model, tmp, engines, vllm_ascend, pydeps):
    prefill, decode, p_kv = start_pd(tmp, model, engines)
    proxy = Proxy(tmp, vllm_ascend, pydeps, [prefill.port], [decode.port])
    engines.append(proxy)

    status, raw = chat(proxy.url)
    assert status == 200, raw
    answer = json.loads(raw)
    assert answer["choices"][0]["message"]["content"].startswith("I am DeepSeek-V4-Flash")
    # The prefill leg ran with max_tokens 1 and kv_transfer_params; the decode leg pulled
    # the KV cache from the prefill's side channel named in them (kv_port + 0*tp + tp_rank).
    assert prefill.log.count('"POST /v1/chat/completions HTTP/1.1" 200') == 1
    assert f"received KV cache of 4 blocks from engine 0 at 127.0.0.1:{p_kv}" in decode.log

    status, raw = chat(proxy.url, max_tokens=5, stream=True)
    events = [line for line in raw.decode().splitlines() if line.startswith("data: ")]
    assert status == 200 and events[-1] == "data: [DONE]"
    assert decode.log.count("received KV cache") == 2


def test_pd_side_channel_unreachable_fails_the_request(model, tmp, engines, vllm_ascend,
                                                       pydeps):
    # The prefill advertises an address where nothing listens (a broken fabric/route):
    # the decode side cannot pull the KV cache and the request fails.
    prefill, decode, _ = start_pd(tmp, model, engines,
                                  prefill_env={"VLLM_HOST_IP": "127.0.0.9"})
    proxy = Proxy(tmp, vllm_ascend, pydeps, [prefill.port], [decode.port])
    engines.append(proxy)
    try:
        _status, raw = chat(proxy.url)
    except (OSError, urllib.error.URLError) as exc:  # the proxy may cut the stream
        raw = str(exc).encode()
    # The proxy has already sent 200 when the decode leg fails, so its body stays empty.
    assert b"I am DeepSeek" not in raw
    assert "KV transfer from 127.0.0.9:" in decode.log
    assert "All 3 attempts failed" in proxy.log_path.read_text()
