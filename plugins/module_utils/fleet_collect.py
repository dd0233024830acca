"""Collect one node's diagnostics into a directory and a tarball (read-only towards the
service); the logic of the module fleet_collect_node.

Writes into OUT:
  containers.txt                  docker ps -a (every container of the node)
  docker/<name>.log               docker logs --timestamps (stdout and stderr)
  docker/<name>.state.json        state, exit code, times, image, labels (no environment)
  files/...                       a copy of the rendered files directory
  npu-smi-info.txt                npu-smi info
  hccn/device-<N>.txt             every hccn_tool query of device N
  manifest.json                   every command run: exit code, seconds, output file
and from "ascend_log_dir" (the host directory that is the engine's ~/ascend), when given:
  ascend/log/, ascend/log.<time>/ CANN/HCCL logs (plog) of this start and the kept earlier
                                  ones (added to the tarball straight from the node's disk)
then packs OUT's content into the gzipped tarball ARCHIVE (one file to fetch). A container
or directory that is absent is recorded as such; nothing fails the run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time


def run(argv, out_dir, rel, timeout, manifest):
    """Run argv, write its stdout and stderr to out_dir/rel, record it in the manifest."""
    start = time.monotonic()
    out_path = os.path.join(out_dir, rel)
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "wb") as out:
        try:
            proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
            out.write(f"\n[collect: timed out after {timeout} s]\n".encode())
        except OSError as err:
            rc = "not run"
            out.write(f"[collect: cannot run {argv[0]}: {err}]\n".encode())
    manifest.append({"command": argv, "rc": rc, "seconds": round(time.monotonic() - start, 2), "output": rel})
    return rc


def container_state(name):
    proc = subprocess.run(["docker", "inspect", name], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"name": name, "state": "absent", "detail": proc.stderr.strip()}
    data = json.loads(proc.stdout)[0]
    state = data.get("State", {})
    config = data.get("Config", {})
    return {
        "name": name,
        "state": "running" if state.get("Running") else "stopped",
        "status": state.get("Status"),
        "exit_code": state.get("ExitCode"),
        "oom_killed": state.get("OOMKilled"),
        "error": state.get("Error"),
        "started_at": state.get("StartedAt"),
        "finished_at": state.get("FinishedAt"),
        "restart_count": data.get("RestartCount"),
        "image": config.get("Image"),
        "image_id": data.get("Image"),
        "labels": config.get("Labels"),
        "command": config.get("Cmd"),
        "created": data.get("Created"),
    }


def collect(req, out_dir, archive):
    """Collect into the directory out_dir, pack it into the gzipped tarball archive; return the
    result (containers' states, commands run, how many failed)."""
    timeout = req.get("timeout", 60)
    manifest = []
    summary = {"containers": {}, "files_dir": req["files_dir"], "files": [], "devices": req.get("devices", 0)}

    run(
        ["docker", "ps", "-a", "--no-trunc", "--format", "{{.Names}}\t{{.Image}}\t{{.Status}}"],
        out_dir,
        "containers.txt",
        timeout,
        manifest,
    )
    for name in req["containers"]:
        state = container_state(name)
        summary["containers"][name] = state["state"]
        docker_dir = os.path.join(out_dir, "docker")
        os.makedirs(docker_dir, exist_ok=True)
        with open(os.path.join(docker_dir, f"{name}.state.json"), "w", encoding="utf-8") as fh:
            json.dump(state, fh, indent=2, sort_keys=True)
            fh.write("\n")
        if state["state"] != "absent":
            run(
                ["docker", "logs", "--timestamps", "--tail", str(req.get("log_tail", "all")), name],
                out_dir,
                f"docker/{name}.log",
                timeout,
                manifest,
            )

    files_dir = req["files_dir"]
    if os.path.isdir(files_dir):
        shutil.copytree(files_dir, os.path.join(out_dir, "files"), symlinks=True)
        summary["files"] = sorted(
            os.path.relpath(os.path.join(root, f), files_dir) for root, _, names in os.walk(files_dir) for f in names
        )
    else:
        summary["files"] = None

    run([req["npu_smi"], "info"], out_dir, "npu-smi-info.txt", timeout, manifest)

    for device in range(int(req.get("devices", 0))):
        rel = f"hccn/device-{device}.txt"
        path = os.path.join(out_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8"):
            pass
        for query in req["hccn_queries"]:
            argv = [req["hccn_tool"], "-i", str(device), *query]
            part = path + ".part"
            run(argv, out_dir, rel + ".part", timeout, manifest)
            manifest[-1]["output"] = rel
            with open(path, "ab") as merged, open(part, "rb") as src:
                merged.write(f"$ {' '.join(argv)}  (exit {manifest[-1]['rc']})\n".encode())
                merged.write(src.read())
                merged.write(b"\n")
            os.remove(part)

    ascend_dir = req.get("ascend_log_dir") or ""
    logs = []
    if ascend_dir and os.path.isdir(ascend_dir):
        logs = sorted(e for e in os.listdir(ascend_dir) if e == "log" or e.startswith("log."))
    summary["ascend_logs"] = {"dir": ascend_dir or None, "entries": logs}

    summary["commands"] = manifest
    with open(os.path.join(out_dir, "manifest.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2, sort_keys=True)
        fh.write("\n")
    with tarfile.open(archive, "w:gz") as tar:
        for entry in sorted(os.listdir(out_dir)):
            tar.add(os.path.join(out_dir, entry), arcname=entry)
        for entry in logs:
            tar.add(os.path.join(ascend_dir, entry), arcname=f"ascend/{entry}")
    return {
        "containers": summary["containers"],
        "commands": len(manifest),
        "failed": sum(1 for m in manifest if m["rc"] != 0),
    }

