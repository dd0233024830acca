#!/usr/bin/env python3
"""Pull once: upstream bytes and bring-up time of a lab topology behind a throttled uplink.

    bench/upstream.py a2-4p4d --rate 20MB/s            # cache and direct, side by side
    bench/upstream.py a3-1p1d --rate 50MB/s --modes cache
    bench/upstream.py a3-1p1d --check                   # counters against real sizes (seconds)

For each mode (``cache``: every node pulls through the fleet's pull-through cache, which pulls
through the throttled upstream; ``direct``: every node pulls from the throttled upstream
itself, as without the cache), from cold caches (every node's containers and images, the
cache's layers and the weights removed): reset the upstream's byte counters, run site.yml,
and compare
  - the bytes the upstream sent for the image and for the weights with their sizes (ratio;
    1.0 = each byte left the upstream once for the whole cluster),
  - the bring-up time with the lower bound max(image, weights) / rate + engine start (the
    serve and proxy phases of the same run).
Results: bench/results/upstream-<date>.json and a row per mode in bench/README.md.

``--check`` does not deploy: it fetches the topology's image (manifest, config, layers) and
weights through the upstream from this machine and checks that the counters equal what was
received (each byte counted once, HTTP headers only on top) and the ratio arithmetic.

Run it as root with the lab's topology lock held (lab/README.md); it brings the topology up
with ``labctl up TOPOLOGY --upstream`` (the overlay then points at the upstream), except
with --check, which needs the topology up and leaves its overlay alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LABCTL = REPO / "lab" / "labctl"
STATE = REPO / "lab" / ".state"
RESULTS = REPO / "bench" / "results"
README = REPO / "bench" / "README.md"
VENV_BIN = REPO / ".venv" / "bin"
GATEWAY = "198.18.0.1"
REGISTRY = f"{GATEWAY}:5000"  # the lab registry, read directly (not counted) for sizes
HUB = f"http://{GATEWAY}:8081"
UPSTREAM_REGISTRY = f"{GATEWAY}:5002"
UPSTREAM_HUB = f"http://{GATEWAY}:8082"
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
])
TABLE_BEGIN = "<!-- upstream results: begin (bench/upstream.py appends rows) -->"
TABLE_END = "<!-- upstream results: end -->"
TABLE_HEAD = (
    "| date (UTC) | machine | topology | nodes | rate | mode | image MB | weights MB "
    "| upstream image bytes / image | upstream weights bytes / weights | bring-up s "
    "| engine start s | lower bound s | bring-up / lower bound |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------------------
# Arithmetic (unit-tested in tests/test_bench.py)


def parse_rate(text: str) -> int:
    """Bytes per second of 20MB/s (decimal MB), 500KB/s, 1GiB/s; must be > 0 here."""
    units = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?(?:/s)?", str(text).strip(), re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise BenchError(f"--rate {text!r}: expected a bandwidth such as 20MB/s or 500KB/s")
    return int(float(match.group(1)) * units[(match.group(2) or "B").upper()])


def lower_bound_s(image_bytes: int, weights_bytes: int, rate: int, engine_start_s: float) -> float:
    """The fastest a cold bring-up can be: both downloads at the link's rate, at once, then
    the engine start."""
    return max(image_bytes, weights_bytes) / rate + engine_start_s


def figures(sizes: dict, counted: dict, rate: int, bring_up_s: float, engine_start_s: float) -> dict:
    """The figures of one run: upstream bytes per size, bring-up against the lower bound."""
    bound = lower_bound_s(sizes["image"], sizes["weights"], rate, engine_start_s)
    sequential = (sizes["image"] + sizes["weights"]) / rate + engine_start_s
    return {
        "image_ratio": round(counted["registry"] / sizes["image"], 3),
        "weights_ratio": round(counted["hub"] / sizes["weights"], 3),
        "lower_bound_s": round(bound, 1),
        "sequential_bound_s": round(sequential, 1),
        "bring_up_s": round(bring_up_s, 1),
        "engine_start_s": round(engine_start_s, 1),
        "bring_up_over_bound": round(bring_up_s / bound, 2),
    }


def role_times(output: str) -> dict[str, float]:
    """Seconds per role from ansible.posix.profile_roles' summary lines."""
    times: dict[str, float] = {}
    for name, secs in re.findall(r"^\s*([\w.]+) -{3,} (\d+(?:\.\d+)?)s\s*$", output, re.MULTILINE):
        times[name.rsplit(".", 1)[-1]] = times.get(name.rsplit(".", 1)[-1], 0.0) + float(secs)
    return times


def table_row(result: dict, run: dict) -> str:
    f = run["figures"]
    machine = result["machine"]
    return (
        f"| {result['date']} | {machine['cores']} cores, {machine['ram_gib']} GiB | {result['topology']} "
        f"| {result['nodes']} | {result['rate_mb_s']} MB/s | {run['mode']} "
        f"| {result['sizes']['image'] / 1e6:.1f} | {result['sizes']['weights'] / 1e6:.1f} "
        f"| {f['image_ratio']:.2f} | {f['weights_ratio']:.2f} | {f['bring_up_s']:.1f} "
        f"| {f['engine_start_s']:.1f} | {f['lower_bound_s']:.1f} | {f['bring_up_over_bound']:.2f} |\n"
    )


def update_readme(text: str, rows: list[str]) -> str:
    """Append rows to the results table between the markers (made if missing)."""
    if TABLE_BEGIN not in text:
        text = text.rstrip("\n") + f"\n\n{TABLE_BEGIN}\n{TABLE_HEAD}{TABLE_END}\n"
    head, rest = text.split(TABLE_BEGIN, 1)
    table, tail = rest.split(TABLE_END, 1)
    table = table.strip("\n") + "\n" if table.strip() else TABLE_HEAD
    if "|---" not in table:
        table = TABLE_HEAD + table
    return f"{head}{TABLE_BEGIN}\n{table}{''.join(rows)}{TABLE_END}{tail}"


def machine() -> dict:
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {"cores": os.cpu_count(), "ram_gib": round(mem_kib / 2**20, 1), "cpu": model,
            "kernel": platform.release()}


# ---------------------------------------------------------------------------------------
# The lab


def labctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(LABCTL), *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise BenchError(f"labctl {' '.join(args)} failed:\n{proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def get(url: str, headers: dict | None = None) -> bytes:
    with HTTP.open(urllib.request.Request(url, headers=headers or {}), timeout=600) as resp:
        return resp.read()


def upstream_report() -> dict:
    return json.loads(labctl("upstream", "bytes").stdout)


def counters(rate: int | None = None) -> dict:
    """Bytes each upstream sent; with rate: also check the link kept that rate (the upstream
    is one for the whole lab: another user changing it spoils the run)."""
    report = upstream_report()
    if rate is not None and report["rate"] != rate:
        raise BenchError(f"the upstream's rate changed during the run ({rate} -> {report['rate']} B/s): "
                         "someone else used `labctl upstream`; run again")
    return {name: u["down"] for name, u in report["upstreams"].items()}


def plan_of(topology: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [str(VENV_BIN / "ansible-playbook"), "playbooks/render.yml", "-i", topology,
             "-e", f"fleet_render_dir={tmp}"],
            cwd=REPO, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BenchError(f"render of {topology} failed:\n{proc.stdout[-2000:]}")
        return json.loads((Path(tmp) / "plan.json").read_text())


def images_and_model(plan: dict) -> tuple[list[str], str]:
    """Repository paths with tag (ascend/vllm-ascend:TAG) of the plan's images, its model."""
    hosts = {**plan["hosts"], **(plan.get("proxy_hosts") or {})}
    images = sorted({h["image"].split("/", 1)[1] for h in hosts.values()})
    models = {h["model_hub_id"] for h in plan["hosts"].values()}
    if len(models) != 1:
        raise BenchError(f"expected one model in the plan, got {sorted(models)}")
    return images, models.pop()


def manifest(registry: str, image: str) -> tuple[bytes, dict]:
    repo, tag = image.rsplit(":", 1)
    raw = get(f"http://{registry}/v2/{repo}/manifests/{tag}", {"Accept": MANIFEST_TYPES})
    return raw, json.loads(raw)


def image_size(image: str) -> int:
    """Bytes a pull of the image moves: manifest, config and compressed layers."""
    raw, doc = manifest(REGISTRY, image)
    return len(raw) + doc["config"]["size"] + sum(layer["size"] for layer in doc["layers"])


def weights_listing(model: str, hub: str = HUB) -> list[dict]:
    data = json.loads(get(f"{hub}/api/v1/models/{model}/repo/files?Revision=master&Recursive=True"))
    return [f for f in data["Data"]["Files"] if f.get("Type") == "blob"]


def nodes_of(topology: str) -> dict:
    lab = json.loads((STATE / topology / "lab.json").read_text())
    return lab["nodes"]


def make_cold(topology: str) -> None:
    """Every node without containers, images, cached layers; the weights cache emptied."""
    script = (
        "docker ps -aq | xargs -r docker rm -f >/dev/null; docker image prune -af >/dev/null; "
        "rm -rf /var/lib/ascend-fleet/image-cache; "
        "find /root/.cache -mindepth 1 -maxdepth 1 ! -name ascend-fleet-lab -exec rm -rf {} +"
    )
    for node in nodes_of(topology).values():
        proc = subprocess.run(["docker", "exec", node["container"], "sh", "-c", script],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BenchError(f"making {node['container']} cold failed: {proc.stderr.strip()}")
        left = subprocess.run(["docker", "exec", node["container"], "docker", "images", "-q"],
                              capture_output=True, text=True, check=False).stdout.split()
        if left:
            raise BenchError(f"{node['container']} still has images after the clean-up: {left}")


def site(topology: str, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    state = STATE / topology
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_roles,fleet_run_lock,fleet_summary",
           "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(state / "facts"),
           "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}
    start = time.monotonic()
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "site.yml", "-i", topology, "-i", str(state / "hosts.yml"), *extra],
        cwd=REPO, capture_output=True, text=True, env=env, check=False)
    return proc, time.monotonic() - start


# ---------------------------------------------------------------------------------------
# Runs


def bench(topology: str, rate: int, modes: list[str], down: bool) -> dict:
    labctl("up", topology, "--upstream")
    labctl("upstream", "start", "--rate", str(rate))
    plan = plan_of(topology)
    images, model = images_and_model(plan)
    sizes = {"image": sum(image_size(i) for i in images),
             "weights": sum(f["Size"] for f in weights_listing(model))}
    result = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "machine": machine(), "topology": topology, "nodes": len(nodes_of(topology)),
        "rate_bytes_s": rate, "rate_mb_s": round(rate / 1e6, 2), "images": images, "model": model,
        "sizes": sizes, "runs": [],
    }
    for mode in modes:
        make_cold(topology)
        labctl("upstream", "set", "--rate", str(rate))
        labctl("upstream", "reset")
        extra = ["-e", f"image_registry_mirror={UPSTREAM_REGISTRY}"] if mode == "direct" else []
        proc, took = site(topology, *extra)
        counted = counters(rate)
        if proc.returncode != 0:
            raise BenchError(f"site.yml ({mode}) failed:\n{proc.stdout[-4000:]}")
        roles = role_times(proc.stdout)
        engine = roles.get("serve", 0.0) + roles.get("proxy", 0.0)
        result["runs"].append({
            "mode": mode, "upstream_bytes": counted, "roles_s": roles,
            "figures": figures(sizes, counted, rate, took, engine),
        })
        print(json.dumps(result["runs"][-1]), flush=True)
    if down:
        labctl("down", topology)
    return result


def check(topology: str) -> dict:
    """Counters against bytes really received through the upstream (no deployment)."""
    if not (STATE / topology / "lab.json").exists():
        raise BenchError(f"{topology} is not up: labctl up {topology}")
    labctl("upstream", "start", "--rate", "0")
    images, model = images_and_model(plan_of(topology))
    labctl("upstream", "reset")
    got = {"registry": 0, "hub": 0}
    requests = {"registry": 0, "hub": 0}
    sizes = {"image": 0, "weights": 0}
    for image in images:
        raw, doc = manifest(UPSTREAM_REGISTRY, image)
        got["registry"] += len(raw)
        requests["registry"] += 1
        repo = image.rsplit(":", 1)[0]
        for blob in [doc["config"], *doc["layers"]]:
            got["registry"] += len(get(f"http://{UPSTREAM_REGISTRY}/v2/{repo}/blobs/{blob['digest']}"))
            requests["registry"] += 1
        sizes["image"] += image_size(image)  # direct from the registry: not counted
    listing = weights_listing(model, UPSTREAM_HUB)
    requests["hub"] += 1
    for entry in listing:
        path = urllib.parse.quote(entry["Path"])
        got["hub"] += len(get(f"{UPSTREAM_HUB}/api/v1/models/{model}/repo?Revision=master&FilePath={path}"))
        requests["hub"] += 1
        sizes["weights"] += entry["Size"]
    counted = counters()
    return {"topology": topology, "received": got, "requests": requests, "counted": counted, "sizes": sizes,
            "image_ratio": round(counted["registry"] / sizes["image"], 4),
            "weights_ratio": round(counted["hub"] / sizes["weights"], 4)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("topology")
    parser.add_argument("--rate", default="20MB/s", help="upstream bandwidth per link (default 20MB/s)")
    parser.add_argument("--modes", default="cache,direct", help="cache, direct or both (default)")
    parser.add_argument("--check", action="store_true", help="only check the counters (no deployment)")
    parser.add_argument("--down", action="store_true", help="take the topology down at the end")
    args = parser.parse_args(argv)
    try:
        if args.check:
            print(json.dumps(check(args.topology), indent=2))
            return 0
        rate = parse_rate(args.rate)
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        if not modes or set(modes) - {"cache", "direct"}:
            raise BenchError(f"--modes {args.modes!r}: cache, direct or cache,direct")
        result = bench(args.topology, rate, modes, args.down)
    except (BenchError, OSError) as exc:
        print(f"bench/upstream.py: error: {exc}", file=sys.stderr)
        return 1
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d-%H%M")
    out = RESULTS / f"upstream-{stamp}-{args.topology}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    README.write_text(update_readme(README.read_text() if README.exists() else "", [
        table_row(result, run) for run in result["runs"]]))
    print(f"results: {out.relative_to(REPO)}; table: bench/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
