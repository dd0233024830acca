"""Preflight probe of one node (run inline: python3 -c SCRIPT JOB_JSON), printing JSON.

Reads, never changes:
  disk     free bytes and filesystem id of the nearest existing directory of each path;
  weights  whether the model directory holds complete weights (the weights role's
           completion marker naming this model and revision, every listed file at its
           recorded size) and how many bytes are already there (a partial download);
  image    whether the engine image reference is present in the Docker Engine;
  own      the ids of our engine and proxy containers (when they exist);
  ss       `ss -Htlnp` (listening TCP sockets with their processes) and, for each pid,
           its command line and the container it runs in (from its cgroup path).
The decisions are made on the controller (ascend_fleet/checks.py).
"""

import contextlib
import json
import os
import re
import subprocess
import sys

MARKER = ".ascend-fleet-complete.json"  # written by the weights role (weights_tool.py)


def _outer_ids():
    """Container ids already in pid 1's cgroup path: the system this runs on is itself a
    container (none on a bare-metal node), so they do not mark a process as containerised."""
    try:
        with open("/proc/1/cgroup", encoding="utf-8") as fh:
            return set(re.findall(r"[0-9a-f]{64}", fh.read()))
    except OSError:
        return set()


OUTER = _outer_ids()


def run(cmd):
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, "", str(exc)
    return proc.returncode, proc.stdout, proc.stderr


def disk(path):
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe) or "/"
    st = os.statvfs(probe)
    return {"free": st.f_bavail * st.f_frsize, "fs": os.stat(probe).st_dev, "probe": probe}


def weights(directory, model, revision):
    have = 0
    for root, _, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):
                have += os.lstat(os.path.join(root, name)).st_size
    complete = False
    try:
        with open(os.path.join(directory, MARKER), encoding="utf-8") as fh:
            marker = json.load(fh)
        complete = (
            marker.get("model") == model
            and marker.get("revision") == revision
            and all(
                os.path.isfile(os.path.join(directory, rel))
                and os.path.getsize(os.path.join(directory, rel)) == meta.get("size")
                for rel, meta in marker.get("files", {}).items()
            )
        )
    except (OSError, ValueError, AttributeError):
        pass
    return {"present": complete, "have_bytes": have}


def owner(pid):
    info = {"cmd": None, "container": None}
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            info["cmd"] = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as fh:
            ids = re.findall(r"([0-9a-f]{64})", fh.read())
        ids = [i for i in ids if i not in OUTER]
        info["container"] = ids[-1] if ids else None
    except OSError:
        pass
    return info


def main():
    job = json.loads(sys.argv[1])
    out = {"disk": {p: disk(p) for p in job["paths"]}}
    out["weights"] = weights(job["model_dir"], job["model"], job["revision"])
    rc, _, _ = run(["docker", "image", "inspect", "--format", "{{.Id}}", job["image"]])
    out["image"] = {"present": rc == 0}
    out["own"] = {}
    for what, name in job["containers"].items():
        rc, cid, _ = run(["docker", "container", "inspect", "--format", "{{.Id}}", name])
        out["own"][what] = cid.strip() if rc == 0 else ""
    rc, ss, err = run(["ss", "-Htlnp"])
    out["ss"] = ss if rc == 0 else ""
    out["ss_error"] = "" if rc == 0 else err.strip()[:200]
    out["owners"] = {pid: owner(pid) for pid in sorted(set(re.findall(r"pid=(\d+)", ss)))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
