"""Evaluation results: thresholds, the clients' raw outputs, summary.json, regressions, report.

The clients themselves (AISBench, ``vllm bench serve``) are run by the ``eval`` role; this
module only reads what they wrote. Layout of one run directory
(``results/<topology>/<UTC time>/``)::

    meta.json                      written by the role: recipe, image, plan digest, settings
    smoke.json                     one request per prefill x decode path (or per rank)
    aisbench-accuracy/<ts>/...     AISBench's own work dir (summary/summary_<ts>.csv, details)
    aisbench-perf/<ts>/...         AISBench perf mode (performances/<model>/<dataset>.json)
    vllm-bench/c<N>.json           ``vllm bench serve --save-result``, one per concurrency
    summary.json, report.html      written here

Command line (used by the role, on the controller)::

    python -m ascend_fleet.evaluation summarize RUN_DIR [--fail-on-regression]

exit 0 when every gate passed, 1 with one line per failure (dataset, score, threshold; a
failed request; a broken P/D path), 2 on unreadable input.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

PERF_KEYS = ("output_throughput", "request_throughput", "ttft_p50_ms", "ttft_p99_ms",
             "tpot_p50_ms", "tpot_p99_ms")
# Direction of "better" for each compared metric: +1 higher is better, -1 lower is better.
BETTER = {"output_throughput": 1, "request_throughput": 1, "ttft_p50_ms": -1,
          "ttft_p99_ms": -1, "tpot_p50_ms": -1, "tpot_p99_ms": -1}


class EvalError(Exception):
    """Input the evaluation cannot use (printed as one line, no traceback)."""


# -- thresholds -----------------------------------------------------------------------------

def thresholds(recipe: dict, overrides: dict | None = None) -> dict[str, float]:
    """Per dataset: the recipe's score minus its tolerance, or the operator's override.

    ``recipe["evaluation"]["accuracy"] = {gsm8k: {score: 96.30, tolerance: 2.0}, ...}``;
    ``overrides = {gsm8k: 90}`` (``eval_thresholds``) replaces single datasets.
    """
    table = ((recipe.get("evaluation") or {}).get("accuracy") or {})
    out: dict[str, float] = {}
    for name, entry in table.items():
        try:
            out[name] = round(float(entry["score"]) - float(entry.get("tolerance", 0)), 4)
        except (KeyError, TypeError, ValueError):
            raise EvalError(f"recipe {recipe.get('id')}: evaluation.accuracy.{name} needs a "
                            f"numeric score (and tolerance), got {entry!r}") from None
    for name, value in (overrides or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
            raise EvalError(f"eval_thresholds.{name}: expected a score between 0 and 100, "
                            f"got {value!r}")
        out[name] = float(value)
    return out


def dataset_key(name: str) -> str:
    """AISBench's dataset abbreviation (``GPQA_diamond``, ``gsm8k``) to the recipe's key."""
    return name.split("_")[0].lower()


# -- smoke: every path ---------------------------------------------------------------------

def smoke_paths(plan: dict) -> list[dict[str, str]]:
    """One path per prefill node x decode node (so every prefill instance x decode instance
    pair and every node's KV link is tried), or per API port of a single node. URLs use each
    node's cluster address, as the proxy does."""
    hosts = plan.get("hosts", {})

    def url(host: dict) -> str:
        return f"http://{host['connect_address']}:{host['api_ports'][0]}"

    prefill = [h for h in hosts.values() if h.get("role") == "prefill"]
    decode = [h for h in hosts.values() if h.get("role") == "decode"]
    paths = []
    for p in prefill:
        for d in decode:
            paths.append({"name": f"{p['host']} ({p['instance']}) -> {d['host']} "
                                  f"({d['instance']})",
                          "prefill": url(p), "decode": url(d)})
    for h in hosts.values():
        if h.get("role") == "single":
            for port in h["api_ports"]:
                paths.append({"name": f"{h['host']}:{port}",
                              "url": f"http://{h['connect_address']}:{port}"})
    return paths


# -- the clients' outputs -------------------------------------------------------------------

def parse_number(value: Any) -> float | None:
    """A number from a client's table cell ("95.00", "1741.5 token/s"); None for "-"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) if math.isfinite(value) else None
    match = re.match(r"\s*(-?\d+(?:\.\d+)?)", str(value))
    return float(match.group(1)) if match else None


def read_aisbench_accuracy(work: Path) -> dict[str, float | None]:
    """{dataset: score} from the newest ``summary/summary_*.csv`` under an AISBench work dir.
    A score of ``-`` (every request failed: AISBench still exits 0) is None."""
    found = sorted(Path(work).glob("*/summary/summary_*.csv"))
    if not found:
        raise EvalError(f"no AISBench summary (*/summary/summary_*.csv) under {work}")
    rows = list(csv.reader(io.StringIO(found[-1].read_text())))
    if not rows or rows[0][:4] != ["dataset", "version", "metric", "mode"] or len(rows[0]) < 5:
        raise EvalError(f"{found[-1]}: not an AISBench summary (header {rows[:1]})")
    return {dataset_key(row[0]): parse_number(row[4]) for row in rows[1:] if len(row) >= 5}


def read_vllm_bench(path: Path) -> dict[str, Any]:
    """The metrics of one ``vllm bench serve --save-result`` file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise EvalError(f"{path}: unreadable vllm bench result ({exc})") from None
    out = {"completed": int(data.get("completed") or 0), "failed": int(data.get("failed") or 0),
           "num_prompts": int(data.get("num_prompts") or 0)}
    for key in ("output_throughput", "request_throughput"):
        out[key] = parse_number(data.get(key))
    for metric in ("ttft", "tpot"):
        out[f"{metric}_p50_ms"] = parse_number(data.get(f"p50_{metric}_ms",
                                                        data.get(f"median_{metric}_ms")))
        out[f"{metric}_p99_ms"] = parse_number(data.get(f"p99_{metric}_ms"))
    return out


def read_aisbench_perf(work: Path) -> dict[str, Any]:
    """The headline numbers of AISBench's perf mode (``performances/<model>/<ds>.json``):
    values like ``{"total": "1741.5 token/s"}`` become numbers."""
    found = sorted(Path(work).glob("*/performances/*/*.json"))
    found = [p for p in found if not p.name.endswith("_details.json")]
    if not found:
        raise EvalError(f"no AISBench perf result (*/performances/*/*.json) under {work}")
    data = json.loads(found[-1].read_text())
    out: dict[str, Any] = {"file": str(found[-1].relative_to(work))}
    for key, value in data.items():
        if isinstance(value, dict) and "total" in value:
            out[key] = parse_number(value["total"])
        elif not isinstance(value, (dict, list)):
            out[key] = parse_number(value)
    return out


# -- summary, gates, comparison --------------------------------------------------------------

def summarize(run: Path) -> dict[str, Any]:
    """summary.json's content from a run directory (see the module doc)."""
    run = Path(run)
    try:
        meta = json.loads((run / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise EvalError(f"{run}/meta.json: {exc}") from None
    summary: dict[str, Any] = {
        "recipe": meta.get("recipe"), "topology": meta.get("topology"),
        "time": meta.get("time") or run.name,
        "image": {"reference": meta.get("image"), "digest": meta.get("image_digest")},
        "plan_digest": meta.get("plan_digest"), "entrypoint": meta.get("entrypoint"),
        "suites": meta.get("suites", []), "clients": meta.get("clients", {}),
        "accuracy": {}, "perf": {}, "failures": [],
    }
    failures = summary["failures"]
    smoke_file = run / "smoke.json"
    if smoke_file.is_file():
        smoke = json.loads(smoke_file.read_text())
        summary["smoke"] = smoke
        for path in smoke.get("paths", []):
            if not path.get("ok"):
                failures.append(f"smoke: {path.get('name')} failed: {path.get('error')}")
    limits = meta.get("thresholds") or {}
    if "accuracy" in summary["suites"]:
        scores = read_aisbench_accuracy(run / "aisbench-accuracy")
        for name in meta.get("datasets") or sorted(scores):
            score, limit = scores.get(name), limits.get(name)
            entry = {"score": score, "threshold": limit,
                     "passed": score is not None and (limit is None or score >= limit)}
            summary["accuracy"][name] = entry
            if score is None:
                failures.append(f"accuracy: dataset {name}: no score (every request failed? "
                                "see aisbench-accuracy/*/logs)")
            elif limit is not None and score < limit:
                failures.append(f"accuracy: dataset {name}: score {score:.2f} is below the "
                                f"threshold {limit:.2f}")
    if "perf" in summary["suites"]:
        for path in sorted((run / "vllm-bench").glob("c*.json"),
                           key=lambda p: int(re.sub(r"\D", "", p.stem) or 0)):
            result = read_vllm_bench(path)
            conc = path.stem[1:]
            summary["perf"][conc] = result
            if result["failed"] or not result["completed"]:
                failures.append(f"perf: vllm bench serve at concurrency {conc}: "
                                f"{result['completed']} completed, {result['failed']} failed")
        if (run / "aisbench-perf").is_dir():
            summary["aisbench_perf"] = read_aisbench_perf(run / "aisbench-perf")
    summary["passed"] = not failures
    return summary


def compare(current: dict, previous: dict | None, tolerance: float = 0.1,
            accuracy_points: float = 1.0) -> list[dict[str, Any]]:
    """Regressions of ``current`` against ``previous`` (the last run of the topology): a perf
    metric worse by more than ``tolerance`` (a fraction) at the same concurrency, or an
    accuracy lower by more than ``accuracy_points``."""
    if not previous:
        return []
    found = []
    for conc, now in current.get("perf", {}).items():
        before = previous.get("perf", {}).get(conc)
        if not before:
            continue
        for key, sign in BETTER.items():
            a, b = before.get(key), now.get(key)
            if a is None or b is None or a <= 0:
                continue
            change = (b - a) / a
            if sign * change < -tolerance:
                found.append({"what": f"perf.{conc}.{key}", "previous": a, "current": b,
                              "change_pct": round(100 * change, 1)})
    for name, now in current.get("accuracy", {}).items():
        before = (previous.get("accuracy", {}).get(name) or {}).get("score")
        if before is not None and now.get("score") is not None \
                and now["score"] < before - accuracy_points:
            found.append({"what": f"accuracy.{name}.score", "previous": before,
                          "current": now["score"],
                          "change_pct": round(100 * (now["score"] - before) / before, 1)})
    return found


def previous_run(run: Path) -> Path | None:
    """The newest earlier run of the same topology with a summary.json."""
    run = Path(run)
    earlier = sorted(p for p in run.parent.iterdir()
                     if p.is_dir() and p.name < run.name and (p / "summary.json").is_file())
    return earlier[-1] if earlier else None


# -- the report --------------------------------------------------------------------------------

def _fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else (f"{value:.{digits}f}" if isinstance(value, float)
                                      else str(value))


def svg_lines(title: str, xs: list[str], series: dict[str, list[float | None]],
              unit: str, element_id: str) -> str:
    """A line chart (one polyline per series, a circle per point) as inline SVG."""
    w, h, left, bottom, top, right = 520, 260, 60, 40, 30, 130
    values = [v for vals in series.values() for v in vals if v is not None]
    top_value = max(values) * 1.1 if values and max(values) > 0 else 1.0
    n = max(len(xs), 1)

    def x(i: int) -> float:
        return left + (w - left - right) * (i / (n - 1) if n > 1 else 0.5)

    def y(v: float) -> float:
        return h - bottom - (h - bottom - top) * v / top_value

    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    parts = [f'<svg id="{element_id}" class="plot" xmlns="http://www.w3.org/2000/svg" '
             f'width="{w}" height="{h}" viewBox="0 0 {w} {h}">',
             f'<text x="{w / 2 - right / 2}" y="18" text-anchor="middle" '
             f'font-weight="bold">{html.escape(title)}</text>',
             f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" '
             'stroke="#333"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="#333"/>',
             f'<text x="{(w - right + left) / 2}" y="{h - 6}" text-anchor="middle">'
             'concurrency</text>',
             f'<text x="12" y="{top - 10}" font-size="11">{html.escape(unit)}</text>']
    for k in range(5):
        v = top_value * k / 4
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" font-size="10" '
                     f'text-anchor="end">{v:.0f}</text>')
        parts.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{w - right}" y2="{y(v):.1f}" '
                     'stroke="#ddd"/>')
    for i, label in enumerate(xs):
        parts.append(f'<text x="{x(i):.1f}" y="{h - bottom + 16}" font-size="11" '
                     f'text-anchor="middle">{html.escape(label)}</text>')
    for s, (name, vals) in enumerate(series.items()):
        colour = colours[s % len(colours)]
        points = [(x(i), y(v)) for i, v in enumerate(vals) if v is not None]
        if points:
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                         + " ".join(f"{px:.1f},{py:.1f}" for px, py in points) + '"/>')
        for px, py in points:
            parts.append(f'<circle class="point" cx="{px:.1f}" cy="{py:.1f}" r="4" '
                         f'fill="{colour}"/>')
        parts.append(f'<rect x="{w - right + 10}" y="{top + 18 * s}" width="12" height="12" '
                     f'fill="{colour}"/><text x="{w - right + 28}" y="{top + 10 + 18 * s}" '
                     f'font-size="11">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_accuracy(accuracy: dict[str, dict]) -> str:
    """Bars of each dataset's score with its threshold as a dashed line (red bar: below)."""
    w, h, left, bottom, top = 520, 260, 60, 40, 30
    names = sorted(accuracy)
    n = max(len(names), 1)
    slot = (w - left - 20) / n

    def y(v: float) -> float:
        return h - bottom - (h - bottom - top) * v / 100

    parts = [f'<svg id="plot-accuracy" class="plot" xmlns="http://www.w3.org/2000/svg" '
             f'width="{w}" height="{h}" viewBox="0 0 {w} {h}">',
             f'<text x="{w / 2}" y="18" text-anchor="middle" font-weight="bold">'
             'Accuracy against threshold</text>',
             f'<line x1="{left}" y1="{h - bottom}" x2="{w - 20}" y2="{h - bottom}" stroke="#333"/>']
    for k in range(0, 101, 25):
        parts.append(f'<text x="{left - 6}" y="{y(k) + 4:.1f}" font-size="10" '
                     f'text-anchor="end">{k}</text><line x1="{left}" y1="{y(k):.1f}" '
                     f'x2="{w - 20}" y2="{y(k):.1f}" stroke="#ddd"/>')
    for i, name in enumerate(names):
        entry = accuracy[name]
        score, limit = entry.get("score"), entry.get("threshold")
        x0 = left + slot * i + slot * 0.2
        bw = slot * 0.6
        colour = "#2ca02c" if entry.get("passed") else "#d62728"
        if score is not None:
            parts.append(f'<rect class="bar" x="{x0:.1f}" y="{y(score):.1f}" width="{bw:.1f}" '
                         f'height="{y(0) - y(score):.1f}" fill="{colour}"/>'
                         f'<text x="{x0 + bw / 2:.1f}" y="{y(score) - 4:.1f}" font-size="11" '
                         f'text-anchor="middle">{score:.2f}</text>')
        if limit is not None:
            parts.append(f'<line class="threshold" x1="{x0 - 6:.1f}" y1="{y(limit):.1f}" '
                         f'x2="{x0 + bw + 6:.1f}" y2="{y(limit):.1f}" stroke="#000" '
                         f'stroke-width="2" stroke-dasharray="6,3"/>')
        parts.append(f'<text x="{x0 + bw / 2:.1f}" y="{h - bottom + 16}" font-size="12" '
                     f'text-anchor="middle">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_report(summary: dict, previous: dict | None) -> str:
    """The self-contained report.html (no script, no network): plots, tables, comparison."""
    esc = html.escape
    perf = summary.get("perf", {})
    concs = sorted(perf, key=lambda c: int(c))
    prev_perf = (previous or {}).get("perf", {})
    verdict = "PASSED" if summary.get("passed") else "FAILED"
    rows = []
    for name, entry in sorted(summary.get("accuracy", {}).items()):
        state = "pass" if entry.get("passed") else "fail"
        rows.append(f'<tr class="{state}"><td>{esc(name)}</td><td>{_fmt(entry.get("score"))}'
                    f'</td><td>{_fmt(entry.get("threshold"))}</td><td>{state}</td></tr>')
    perf_rows = []
    for c in concs:
        p = perf[c]
        cells = "".join(f"<td>{_fmt(p.get(k))}</td>" for k in PERF_KEYS)
        perf_rows.append(f"<tr><td>{esc(c)}</td>{cells}<td>{p.get('completed')}/"
                         f"{p.get('failed')}</td></tr>")
    regressions = summary.get("regressions", [])
    reg_rows = "".join(
        f'<tr class="regression"><td>{esc(r["what"])}</td><td>{_fmt(r["previous"])}</td>'
        f'<td>{_fmt(r["current"])}</td><td>{r["change_pct"]:+.1f} %</td></tr>'
        for r in regressions)
    if previous is None:
        comparison = '<p id="comparison">No previous run of this topology to compare with.</p>'
    elif regressions:
        comparison = (f'<p id="comparison" class="fail">REGRESSION against the run of '
                      f'{esc(str(summary.get("previous")))}: {len(regressions)} metric(s) '
                      'worse than the tolerance.</p><table><tr><th>metric</th><th>previous</th>'
                      f'<th>current</th><th>change</th></tr>{reg_rows}</table>')
    else:
        comparison = (f'<p id="comparison" class="pass">No regression against the run of '
                      f'{esc(str(summary.get("previous")))}.</p>')
    plots = []
    if summary.get("accuracy"):
        plots.append(svg_accuracy(summary["accuracy"]))
    if concs:
        thr = {"this run": [perf[c].get("output_throughput") for c in concs]}
        if prev_perf:
            thr["previous"] = [(prev_perf.get(c) or {}).get("output_throughput") for c in concs]
        plots.append(svg_lines("Output throughput", concs, thr, "tokens/s", "plot-throughput"))
        lat = {f"{m} {q}": [perf[c].get(f"{m.lower()}_{q}_ms") for c in concs]
               for m in ("TTFT", "TPOT") for q in ("p50", "p99")}
        plots.append(svg_lines("Latency", concs, lat, "ms", "plot-latency"))
    failures = "".join(f"<li>{esc(f)}</li>" for f in summary.get("failures", []))
    smoke = summary.get("smoke", {}).get("paths", [])
    smoke_ok = sum(1 for p in smoke if p.get("ok"))
    ais = summary.get("aisbench_perf") or {}
    ais_rows = "".join(f"<tr><td>{esc(k)}</td><td>{_fmt(v)}</td></tr>"
                       for k, v in ais.items() if k != "file")
    image = summary.get("image") or {}
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Evaluation {esc(str(summary.get('topology')))} {esc(str(summary.get('time')))}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; }}
td, th {{ border: 1px solid #bbb; padding: 3px 8px; text-align: right; }}
th {{ background: #eee; }} .pass {{ color: #1a7f37; }} .fail, .regression {{ color: #c62828; }}
#verdict {{ font-size: 1.4em; font-weight: bold; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 12px; }}
.plot {{ border: 1px solid #ccc; background: #fff; }}
</style></head><body>
<h1>Evaluation of {esc(str(summary.get('topology')))}</h1>
<p id="verdict" class="{'pass' if summary.get('passed') else 'fail'}">{verdict}</p>
<p>{esc(str(summary.get('time')))} &middot; recipe {esc(str(summary.get('recipe')))} &middot;
image {esc(str(image.get('reference')))} ({esc(str(image.get('digest')))}) &middot;
plan {esc(str(summary.get('plan_digest'))[:16])} &middot; entry point
{esc(str((summary.get('entrypoint') or {}).get('url')))}</p>
<ul id="failures">{failures}</ul>
<div class="plots">{''.join(plots)}</div>
<h2>Comparison with the previous run</h2>{comparison}
<h2>Smoke: every path</h2><p id="smoke">{smoke_ok}/{len(smoke)} paths answered.</p>
<h2>Accuracy (AISBench)</h2>
<table id="accuracy"><tr><th>dataset</th><th>score</th><th>threshold</th><th>result</th></tr>
{''.join(rows)}</table>
<h2>Performance (vllm bench serve)</h2>
<table id="perf"><tr><th>concurrency</th>{''.join(f'<th>{k}</th>' for k in PERF_KEYS)}
<th>completed/failed</th></tr>{''.join(perf_rows)}</table>
<h2>Performance (AISBench perf mode)</h2><table id="aisbench-perf">{ais_rows}</table>
</body></html>
"""


def write_run(run: Path, fail_on_regression: bool = False, tolerance: float = 0.1) -> dict:
    """summary.json and report.html of a run; returns the summary (with its verdict)."""
    run = Path(run)
    summary = summarize(run)
    prev_dir = previous_run(run)
    previous = json.loads((prev_dir / "summary.json").read_text()) if prev_dir else None
    summary["previous"] = prev_dir.name if prev_dir else None
    summary["regressions"] = compare(summary, previous, tolerance)
    if fail_on_regression:
        summary["failures"] += [f"regression: {r['what']} {r['previous']} -> {r['current']} "
                                f"({r['change_pct']:+.1f} %)" for r in summary["regressions"]]
        summary["passed"] = not summary["failures"]
    (run / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (run / "report.html").write_text(render_report(summary, previous))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ascend_fleet.evaluation")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("summarize", help="summary.json and report.html of a run directory")
    p.add_argument("run")
    p.add_argument("--fail-on-regression", action="store_true")
    p.add_argument("--tolerance", type=float, default=0.1,
                   help="perf regression tolerance, a fraction (default 0.1)")
    p = sub.add_parser("thresholds", help="the accuracy thresholds of a recipe, as JSON")
    p.add_argument("recipe")
    p.add_argument("--overrides", default="{}", help="JSON {dataset: score}")
    args = parser.parse_args(argv)
    try:
        if args.command == "thresholds":
            from ascend_fleet.recipes import load_recipe

            print(json.dumps(thresholds(load_recipe(args.recipe), json.loads(args.overrides))))
            return 0
        summary = write_run(Path(args.run), args.fail_on_regression, args.tolerance)
    except (EvalError, ValueError) as exc:
        print(f"evaluation: {exc}", file=sys.stderr)
        return 2
    for name, entry in sorted(summary["accuracy"].items()):
        print(f"accuracy {name}: {_fmt(entry['score'])} (threshold {_fmt(entry['threshold'])})")
    for conc, p in sorted(summary["perf"].items(), key=lambda kv: int(kv[0])):
        print(f"perf c={conc}: {_fmt(p['output_throughput'])} tok/s, TTFT p50/p99 "
              f"{_fmt(p['ttft_p50_ms'])}/{_fmt(p['ttft_p99_ms'])} ms, TPOT p50/p99 "
              f"{_fmt(p['tpot_p50_ms'])}/{_fmt(p['tpot_p99_ms'])} ms")
    for reg in summary["regressions"]:
        print(f"REGRESSION {reg['what']}: {reg['previous']} -> {reg['current']} "
              f"({reg['change_pct']:+.1f} %)")
    for failure in summary["failures"]:
        print(f"FAILED {failure}")
    print(f"results: {Path(args.run) / 'report.html'}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
