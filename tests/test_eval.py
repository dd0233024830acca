"""Evaluation logic (ascend_fleet.evaluation): thresholds, the clients' outputs, summary,
regressions, the report (rendered in a real headless Chromium), the smoke paths."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from ascend_fleet import evaluation as ev
from ascend_fleet.inventory import load_yaml_inventory
from ascend_fleet.recipes import load_recipe
from ascend_fleet.topology import build_plan
from tests.conftest import REPO

RECIPE = "dsv4-flash-w8a8-mtp@v0.21.0rc1"


def test_thresholds_are_the_tutorial_scores_minus_the_tolerance():
    limits = ev.thresholds(load_recipe(RECIPE))
    assert limits == {"gpqa": pytest.approx(88.17 - 3.0), "gsm8k": pytest.approx(96.30 - 2.0)}
    assert ev.thresholds(load_recipe(RECIPE), {"gsm8k": 90})["gsm8k"] == 90.0


@pytest.mark.parametrize("bad", [120, -1, "90", True])
def test_a_bad_threshold_override_is_refused_by_name(bad):
    with pytest.raises(ev.EvalError, match=r"eval_thresholds\.gsm8k: expected a score between 0 and 100"):
        ev.thresholds(load_recipe(RECIPE), {"gsm8k": bad})


def write_run(root: Path, name: str, scores: dict, perf: dict, smoke_ok: bool = True,
              thresholds: dict | None = None) -> Path:
    """A run directory as the role leaves it, with the clients' file formats."""
    run = root / name
    (run / "aisbench-accuracy" / "20261130_010203" / "summary").mkdir(parents=True)
    lines = ["dataset,version,metric,mode,vllm-api-general-chat"]
    abbr = {"gpqa": "GPQA_diamond", "gsm8k": "gsm8k"}
    lines += [f"{abbr[k]},abc123,accuracy,gen,{v}" for k, v in scores.items()]
    (run / "aisbench-accuracy" / "20261130_010203" / "summary" / "summary_20261130_010203.csv"
     ).write_text("\n".join(lines) + "\n")
    (run / "vllm-bench").mkdir()
    for conc, (thr, ttft, tpot, failed) in perf.items():
        (run / "vllm-bench" / f"c{conc}.json").write_text(json.dumps({
            "completed": 8 - failed, "failed": failed, "num_prompts": 8,
            "output_throughput": thr, "request_throughput": thr / 16,
            "median_ttft_ms": ttft, "p50_ttft_ms": ttft, "p99_ttft_ms": ttft * 2,
            "median_tpot_ms": tpot, "p50_tpot_ms": tpot, "p99_tpot_ms": tpot * 1.5}))
    perf_dir = run / "aisbench-perf" / "20261130_010203" / "performances" / "vllm-api-stream-chat"
    perf_dir.mkdir(parents=True)
    (perf_dir / "gsm8k.json").write_text(json.dumps({
        "Benchmark Duration": {"total": "1234.5 ms"}, "Output Token Throughput": {"total": "321.5 token/s"}}))
    (run / "smoke.json").write_text(json.dumps({"paths": [
        {"name": "prefill-0 (prefill-0) -> decode-0 (decode-0)", "ok": True, "error": None},
        {"name": "prefill-1 (prefill-1) -> decode-0 (decode-0)", "ok": smoke_ok,
         "error": None if smoke_ok else "http://198.18.1.11:7100 answered HTTP 500: KV transfer failed"},
    ]}))
    (run / "meta.json").write_text(json.dumps({
        "recipe": RECIPE, "topology": "a2-4p4d", "time": name, "image": "reg/ascend/vllm-ascend:v0.21.0rc1",
        "image_digest": "sha256:" + "ab" * 32, "plan_digest": "cd" * 32,
        "entrypoint": {"url": "http://198.18.1.10:1999"}, "suites": ["accuracy", "perf"],
        "datasets": sorted(scores), "thresholds": thresholds or {"gsm8k": 90.0, "gpqa": 85.0}}))
    return run


def test_summary_has_the_fields_of_the_issue(tmp_path):
    run = write_run(tmp_path, "20261130T010203Z", {"gsm8k": "95.00", "gpqa": "95.00"},
                    {1: (80.0, 20.0, 5.0, 0), 4: (300.0, 25.0, 5.5, 0)})
    summary = ev.write_run(run)
    assert summary["passed"] is True and summary["failures"] == []
    data = json.loads((run / "summary.json").read_text())
    assert data["recipe"] == RECIPE and data["topology"] == "a2-4p4d"
    assert data["image"] == {"reference": "reg/ascend/vllm-ascend:v0.21.0rc1", "digest": "sha256:" + "ab" * 32}
    assert data["plan_digest"] == "cd" * 32
    assert data["accuracy"]["gsm8k"] == {"score": 95.0, "threshold": 90.0, "passed": True}
    assert data["accuracy"]["gpqa"]["threshold"] == 85.0
    assert data["perf"]["4"]["output_throughput"] == 300.0
    assert data["perf"]["4"]["ttft_p50_ms"] == 25.0 and data["perf"]["4"]["ttft_p99_ms"] == 50.0
    assert data["perf"]["1"]["tpot_p50_ms"] == 5.0 and data["perf"]["1"]["tpot_p99_ms"] == 7.5
    assert data["aisbench_perf"]["Output Token Throughput"] == 321.5
    assert data["previous"] is None and data["regressions"] == []


def test_a_score_below_the_threshold_fails_naming_dataset_score_and_threshold(tmp_path, capsys):
    run = write_run(tmp_path, "20261130T010203Z", {"gsm8k": "50.00", "gpqa": "95.00"},
                    {1: (80.0, 20.0, 5.0, 0)})
    assert ev.main(["summarize", str(run)]) == 1
    out = capsys.readouterr().out
    assert "FAILED accuracy: dataset gsm8k: score 50.00 is below the threshold 90.00" in out
    assert "gpqa" not in "".join(line for line in out.splitlines() if line.startswith("FAILED"))
    assert json.loads((run / "summary.json").read_text())["passed"] is False


def test_a_dash_score_and_failed_requests_fail_though_the_clients_exit_0(tmp_path):
    run = write_run(tmp_path, "20261130T010203Z", {"gsm8k": "-", "gpqa": "95.00"},
                    {1: (0.0, 0.0, 0.0, 8)})
    summary = ev.write_run(run)
    assert any("dataset gsm8k: no score" in f for f in summary["failures"])
    assert any("concurrency 1: 0 completed, 8 failed" in f for f in summary["failures"])


def test_a_broken_smoke_path_fails_naming_the_path(tmp_path):
    run = write_run(tmp_path, "20261130T010203Z", {"gsm8k": "95"}, {1: (80.0, 20.0, 5.0, 0)},
                    smoke_ok=False)
    summary = ev.write_run(run)
    assert summary["failures"] == [
        "smoke: prefill-1 (prefill-1) -> decode-0 (decode-0) failed: "
        "http://198.18.1.11:7100 answered HTTP 500: KV transfer failed"]


def test_regressions_against_the_previous_run_of_the_topology(tmp_path):
    write_run(tmp_path, "20261130T010000Z", {"gsm8k": "95"}, {1: (100.0, 20.0, 5.0, 0), 4: (400.0, 20.0, 5.0, 0)})
    ev.write_run(tmp_path / "20261130T010000Z")
    run = write_run(tmp_path, "20261130T020000Z", {"gsm8k": "92"},
                    {1: (95.0, 21.0, 5.0, 0), 4: (200.0, 40.0, 5.0, 0)})
    summary = ev.write_run(run)
    assert summary["previous"] == "20261130T010000Z"
    what = {r["what"]: r for r in summary["regressions"]}
    # c=1 within 10 %; c=4 throughput halved and TTFT doubled; accuracy down 3 points.
    assert set(what) == {"perf.4.output_throughput", "perf.4.request_throughput",
                         "perf.4.ttft_p50_ms", "perf.4.ttft_p99_ms", "accuracy.gsm8k.score"}
    assert what["perf.4.output_throughput"]["change_pct"] == -50.0
    assert summary["passed"] is True  # flagged, not failed by default
    assert ev.write_run(run, fail_on_regression=True)["passed"] is False


def shipped_plan(topology: str) -> dict:
    """The plan of a shipped inventory, as the validate role builds it (no playbook run)."""
    hosts, groups = load_yaml_inventory(str(REPO / "inventories" / topology / "hosts.yml"))
    plan = build_plan(hosts, groups, mode="render")
    assert plan["errors"] == []
    return plan


def test_smoke_paths_cover_every_prefill_decode_pair_and_every_single_port():
    plan = shipped_plan("a2-4p4d")
    paths = ev.smoke_paths(plan)
    assert len(paths) == 4 * 4  # 4 prefill nodes (instances) x 4 decode nodes
    assert {p["prefill"] for p in paths} == {
        f"http://{plan['hosts'][h]['connect_address']}:7100" for h in plan["hosts"] if h.startswith("prefill")}
    assert paths[0]["name"] == "prefill-0 (prefill-0) -> decode-0 (decode-0)"
    single = ev.smoke_paths(shipped_plan("a3-single"))
    assert [p["url"] for p in single] == ["http://198.51.100.10:8900"]


def png_pixels(path: Path) -> tuple[int, int, set]:
    """Width, height and the set of distinct RGB(A) pixels of an 8-bit PNG (stdlib only)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    colours = set()
    for row in range(height):
        line = raw[row * (stride + 1):(row + 1) * (stride + 1)]
        ftype, cur = line[0], bytearray(line[1:])
        for i in range(stride):
            a = cur[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                cur[i] = (cur[i] + a) & 255
            elif ftype == 2:
                cur[i] = (cur[i] + b) & 255
            elif ftype == 3:
                cur[i] = (cur[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                cur[i] = (cur[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        if row % 4 == 0:
            colours.update(bytes(cur[i:i + 3]) for i in range(0, stride, bpp * 3))
        prev = cur
    return width, height, colours


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("chromium is not installed (scripts/setup.sh installs Debian's chromium)")
    return found


def render_in_chromium(html: Path, out_png: Path) -> str:
    """Load the page once in headless Chromium: screenshot to out_png, return the rendered DOM."""
    env = {**os.environ, "HOME": str(out_png.parent)}
    proc = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--disable-dev-shm-usage", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={out_png.parent / 'chromium-profile'}",
         f"--screenshot={out_png}", "--window-size=1200,1500", "--dump-dom", html.as_uri()],
        capture_output=True, text=True, timeout=180, env=env, check=False)
    assert proc.returncode == 0 and out_png.is_file(), proc.stderr[-2000:]
    return proc.stdout


def test_the_report_renders_in_headless_chromium_with_plots_and_the_regression(tmp_path):
    write_run(tmp_path, "20261130T010000Z", {"gsm8k": "95", "gpqa": "95"},
              {1: (100.0, 20.0, 5.0, 0), 4: (400.0, 20.0, 5.0, 0)})
    ev.write_run(tmp_path / "20261130T010000Z")
    run = write_run(tmp_path, "20261130T020000Z", {"gsm8k": "50", "gpqa": "95"},
                    {1: (100.0, 20.0, 5.0, 0), 4: (200.0, 20.0, 5.0, 0)})
    ev.write_run(run)
    png = tmp_path / "report.png"
    dom = render_in_chromium(run / "report.html", png)
    assert '<p id="verdict" class="fail">FAILED</p>' in dom
    assert 'id="comparison" class="fail">REGRESSION against the run of 20261130T010000Z' in dom
    for plot in ("plot-accuracy", "plot-throughput", "plot-latency"):
        assert f'id="{plot}"' in dom
    # 2 runs x 2 concurrencies on the throughput plot, 4 latency series x 2 points.
    assert dom.count('class="point"') == 4 + 8
    assert dom.count('class="bar"') == 2 and dom.count('class="threshold"') == 2
    assert "score 50.00 is below the threshold 90.00" in dom
    width, height, colours = png_pixels(png)
    assert (width, height) == (1200, 1500)
    # Not blank: white, text, and the plots' colours (green pass bar, red fail bar, blue line).
    assert len(colours) > 20
    assert any(r < 80 and g > 120 and b < 80 for r, g, b in colours)  # green bar
    assert any(r > 180 and g < 80 and b < 80 for r, g, b in colours)  # red bar


def test_the_cli_refuses_a_run_without_meta_cleanly(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ascend_fleet.evaluation", "summarize", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("evaluation: ") and "meta.json" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_lab_hub_cache_is_keyed_on_the_eval_model_files(tmp_path, monkeypatch):
    """A changed tokenizer or answer key in lab/eval/model makes the hub generate a new repository."""
    sys.path.insert(0, str(REPO / "lab" / "hub"))
    try:
        import repo as hub_repo  # lab/hub/repo.py
    finally:
        sys.path.remove(str(REPO / "lab" / "hub"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "tokenizer_config.json").write_text('{"v": 1}\n')
    monkeypatch.setattr(hub_repo, "EVAL_MODEL_FILES", model)
    first = hub_repo.generate(tmp_path / "cache", "org/m", 0.05, shards=1)
    again = hub_repo.generate(tmp_path / "cache", "org/m", 0.05, shards=1)
    assert again["dir"] == first["dir"]
    (model / "tokenizer_config.json").write_text('{"v": 2}\n')
    changed = hub_repo.generate(tmp_path / "cache", "org/m", 0.05, shards=1)
    assert changed["dir"] != first["dir"]
    assert (Path(changed["dir"]) / "tokenizer_config.json").read_text() == '{"v": 2}\n'
