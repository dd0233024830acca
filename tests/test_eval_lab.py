"""The evaluation phase on the lab (marker ``lab``), with the real clients (AISBench and
``vllm bench serve``, from the venv lab/eval/clients makes) against the engine stand-in.

Per topology (a3-1p1d, a2-4p4d) one bring-up (``labctl up`` + site.yml) per module; the
engine switches are cleared after every test. What is proved on each:
- eval.yml passes and writes results/<topology>/<UTC time>/ (summary.json with the issue's
  fields, report.html, the clients' raw outputs);
- with the accuracy switch lowered it fails naming dataset, score and threshold;
- with one P->D KV path broken the smoke step fails naming exactly that path (the other
  paths of the same prefill and decode nodes pass).
The lab overlay keeps the runs small: 40 questions, 8 prompts, concurrencies 1 and 4.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, run_playbook
from tests.lab.conftest import lab_unavailable, labctl, serving

pytestmark = pytest.mark.lab


def clients_venv() -> Path:
    """The controller venv with both clients (built once; nothing to do when it is current)."""
    proc = subprocess.run([str(REPO / "lab" / "eval" / "clients")], capture_output=True, text=True,
                          timeout=1800, check=False)
    assert proc.returncode == 0, f"lab/eval/clients failed:\n{proc.stderr[-3000:]}"
    return Path(proc.stdout.strip().splitlines()[-1])


def eval_play(topology: str, results: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    state = REPO / "lab" / ".state" / topology
    return run_playbook("playbooks/eval.yml", "-i", topology, "-i", str(state / "hosts.yml"),
                        "-e", f"eval_results_dir={results}", *extra, check=False,
                        env={"ANSIBLE_CACHE_PLUGIN_CONNECTION": str(state / "facts"), **(env or {})})


def run_dirs(results: Path, topology: str) -> list[Path]:
    return sorted(p for p in (results / topology).iterdir() if p.is_dir())


@pytest.fixture(scope="module", params=["a3-1p1d", "a2-4p4d"])
def deployed(request):
    """A lab of the topology serving what site.yml deployed; switches cleared afterwards."""
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    topology = request.param
    clients_venv()
    labctl("up", topology)
    labctl("engine", "clear", topology)
    serving(topology)
    try:
        yield topology
    finally:
        # The evaluation restarts nothing: the deployment stays as site.yml left it, for the
        # next module (the a2-4p4d lab is taken down by tests/test_faults_dp_lab.py).
        labctl("engine", "clear", topology, check=False)


@pytest.fixture
def topology(deployed):
    yield deployed
    labctl("engine", "clear", deployed)


def test_eval_passes_and_writes_the_results(topology, tmp_path):
    proc = eval_play(topology, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    [run] = run_dirs(tmp_path, topology)
    assert re.fullmatch(r"\d{8}T\d{6}Z", run.name)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["passed"] is True and summary["failures"] == []
    assert summary["topology"] == topology
    assert summary["recipe"].startswith("dsv4-flash")
    tag = "v0.21.0rc1-a3" if topology.startswith("a3") else "v0.21.0rc1"
    assert summary["image"]["reference"].endswith(f"/ascend/vllm-ascend:{tag}")
    assert re.fullmatch(r".*sha256:[0-9a-f]{64}", summary["image"]["digest"])
    assert re.fullmatch(r"[0-9a-f]{64}", summary["plan_digest"])
    # every P x D path answered (a3-1p1d: 1 x 1; a2-4p4d: 4 x 4)
    smoke = json.loads((run / "smoke.json").read_text())["paths"]
    assert len(smoke) == {"a3-1p1d": 1, "a2-4p4d": 16}[topology]
    assert all(p["ok"] for p in smoke), smoke
    # accuracy: the stand-in answers 95 % right; thresholds from the lab overlay
    for name, threshold in (("gsm8k", 90.0), ("gpqa", 85.0)):
        entry = summary["accuracy"][name]
        assert entry["threshold"] == threshold and entry["passed"] is True
        assert threshold <= entry["score"] <= 100.0
    # perf: the sweep of the overlay's two concurrencies, every request completed
    assert sorted(summary["perf"], key=int) == ["1", "4"]
    for conc, entry in summary["perf"].items():
        assert entry["output_throughput"] > 0, (conc, entry)
        for key in ("ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms"):
            assert entry[key] > 0, (conc, key, entry)
        assert entry["ttft_p99_ms"] >= entry["ttft_p50_ms"]
    # four times the concurrency moves more tokens per second through the stand-in
    assert summary["perf"]["4"]["output_throughput"] > summary["perf"]["1"]["output_throughput"]
    assert summary["aisbench_perf"], "AISBench perf mode left no numbers"
    # the clients' raw outputs and the report
    assert list(run.glob("aisbench-accuracy/*/summary/summary_*.csv"))
    assert list(run.glob("aisbench-perf/*/performances/*/*.json"))
    bench = json.loads((run / "vllm-bench" / "c4.json").read_text())
    assert bench["completed"] == 8 and bench["failed"] == 0
    report = (run / "report.html").read_text()
    for plot in ("plot-accuracy", "plot-throughput", "plot-latency"):
        assert f'id="{plot}"' in report


def test_lowered_accuracy_fails_naming_dataset_score_and_threshold(topology, tmp_path):
    labctl("engine", "set", topology, "accuracy=0.5")
    # the accuracy suite alone, on GSM8K alone (the passing test runs both datasets)
    proc = eval_play(topology, tmp_path, "-e", "eval_suites=accuracy", "-e", '{"eval_datasets": ["gsm8k"]}')
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    found = re.findall(r"dataset (\w+): score (\d+\.\d\d) is below the threshold (\d+\.\d\d)", out)
    assert found and {name for name, _, _ in found} == {"gsm8k"}, out[-4000:]
    assert all(float(score) < float(limit) == 90.0 for _, score, limit in found)
    [run] = run_dirs(tmp_path, topology)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["passed"] is False
    assert summary["accuracy"]["gsm8k"]["score"] < 90.0
    assert (run / "report.html").is_file()


# (prefill node, decode node, the path's name: "node (instance) -> node (instance)")
BROKEN = {
    "a3-1p1d": ("prefill-0", "decode-0", "prefill-0 (prefill-0) -> decode-0 (decode-0)"),
    # decode-1 is the second node of the one decode instance (DP32 over 4 nodes)
    "a2-4p4d": ("prefill-2", "decode-1", "prefill-2 (prefill-2) -> decode-1 (decode-0)"),
}


def test_one_broken_kv_path_fails_the_smoke_step_naming_it(topology, tmp_path):
    prefill, decode, name = BROKEN[topology]
    labctl("engine", "set", topology, f"kv_broken={prefill}:{decode}")
    proc = eval_play(topology, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"smoke: {name} failed" in out, out[-4000:]
    [run] = run_dirs(tmp_path, topology)
    smoke = json.loads((run / "smoke.json").read_text())["paths"]
    failed = [p["name"] for p in smoke if not p["ok"]]
    assert failed == [name]
    # nothing heavy ran after a failed smoke step
    assert not (run / "aisbench-accuracy").exists() and not (run / "vllm-bench").exists()
    assert json.loads((run / "summary.json").read_text())["passed"] is False



def test_container_mode_in_check_mode_shows_the_client_command_lines(topology, tmp_path):
    """Container mode (the default) is not run in the lab (the engine image has no clients);
    --check builds its command lines against the real deployment: the deployed image on
    the entry host, host network, the work dir and the model directory mounted."""
    # results as JSON: one line per message
    proc = eval_play(topology, tmp_path, "--check", "-e", "eval_client_mode=container",
                     env={"ANSIBLE_CALLBACK_RESULT_FORMAT": "json"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    tag = "v0.21.0rc1-a3" if topology.startswith("a3") else "v0.21.0rc1"
    image = re.escape(f"198.18.0.1:5000/ascend/vllm-ascend:{tag}")
    work = f"/var/tmp/ascend-fleet-eval/{topology}"
    for label, entry in (("aisbench-accuracy", "ais_bench"), ("vllm-bench-c4", "vllm"), ("aisbench-perf", "ais_bench")):
        line = re.search(rf'"msg": "{label}: (docker run [^"]*)"', out)
        assert line, f"no command line of {label}:\n{out[-4000:]}"
        argv = line.group(1)
        assert re.search(rf"--net=host --init -w {work} -v {work}:{work} -v \S+:\S+:ro ", argv), argv
        assert re.search(rf"--entrypoint {entry} {image} ", argv), argv
        assert "-e=HF_HUB_OFFLINE" in argv and "-e=AIS_BENCH_DATASETS_CACHE" in argv
    assert not list(tmp_path.rglob("summary.json")), "check mode wrote a summary"
