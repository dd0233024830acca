"""Where the engine image's parts come from, fetched once into ``lab/.cache/engine``.

- a Debian bookworm root filesystem made with ``debootstrap --variant=minbase`` (Docker Hub
  is out of reach, so the image starts from ``docker import``);
- fastapi (<0.124), httpx and uvicorn from PyPI, installed with ``pip install --target`` for
  the image's Python (bookworm: CPython 3.11) as manylinux wheels: what the real PD proxy
  imports;
- vllm-ascend's source distribution from PyPI, for the REAL ``launch_online_dp.py``,
  ``run_dp_template.sh`` and ``load_balance_proxy_server_example.py`` (never committed).

Used by ``lab/engine/build`` and by the tests (which run the real proxy and launcher as local
processes). Every step prints what it runs on stderr and is skipped when its result exists.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "lab" / ".cache" / "engine"

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# python-is-python3: the tutorial runs `python launch_online_dp.py`; iproute2 and procps
# for looking around inside a container (ip addr, ps); hostname (-I) is in minbase.
DEBIAN_PACKAGES = ["python3", "python-is-python3", "iproute2", "procps", "ca-certificates"]
IMAGE_PYTHON = "3.11"  # bookworm's python3
# The real ModelScope client too: the real image carries it (VLLM_USE_MODELSCOPE), and the
# toolkit's weights phase runs `modelscope download` from the engine image.
PYDEPS = ["fastapi<0.124", "httpx", "uvicorn", "modelscope==1.40.2"]
VLLM_ASCEND_VERSION = "0.23.0"  # the closest release on PyPI to the image's v0.21.0rc1
# vllm-ascend's metadata step asks npu-smi for the SoC unless told (see the lab notes).
SDIST_ENV = {"SOC_VERSION": "ascend910b1", "COMPILE_CUSTOM_KERNELS": "0"}

PROXY = "examples/disaggregated_prefill_v1/load_balance_proxy_server_example.py"
LAUNCHER = "examples/external_online_dp/launch_online_dp.py"
TEMPLATE = "examples/external_online_dp/run_dp_template.sh"


@contextlib.contextmanager
def locked():
    """Serialize cache updates between builds and test runs started at the same time."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def run(cmd: list[str], **kwargs) -> None:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=sys.stderr, **kwargs)


def _rootfs_tar() -> Path:
    """A tarball of a minimal bookworm root filesystem (debootstrap needs root)."""
    # The name changes with the package list, so a changed list makes a new tree.
    key = hashlib.sha256(" ".join(DEBIAN_PACKAGES).encode()).hexdigest()[:8]
    tar = CACHE / f"rootfs-{DEBIAN_SUITE}-{platform.machine()}-{key}.tar"
    if tar.is_file():
        return tar
    CACHE.mkdir(parents=True, exist_ok=True)
    tree = CACHE / "rootfs.tmp"
    shutil.rmtree(tree, ignore_errors=True)
    run(["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
         DEBIAN_SUITE, str(tree), DEBIAN_MIRROR])
    # Trim what a server image does not need (docs, man pages, package caches).
    for junk in ("usr/share/doc", "usr/share/man", "usr/share/info", "var/cache/apt",
                 "var/lib/apt/lists"):
        shutil.rmtree(tree / junk, ignore_errors=True)
    partial = tar.with_suffix(".tar.tmp")
    run(["tar", "-C", str(tree), "--numeric-owner", "-cf", str(partial), "."])
    partial.rename(tar)
    shutil.rmtree(tree, ignore_errors=True)
    return tar


def _pydeps() -> Path:
    """fastapi/httpx/uvicorn for the image's Python, as a directory for site-packages."""
    target = CACHE / f"pydeps-py{IMAGE_PYTHON}-{platform.machine()}"
    marker = target / ".complete"
    spec = " ".join(PYDEPS)
    if marker.is_file() and marker.read_text() == spec:
        return target
    shutil.rmtree(target, ignore_errors=True)
    machine = platform.machine()
    run([sys.executable, "-m", "pip", "install", "--quiet", "--no-compile",
         "--target", str(target), "--python-version", IMAGE_PYTHON,
         "--implementation", "cp", "--only-binary=:all:",
         "--platform", f"manylinux2014_{machine}", "--platform", f"manylinux_2_17_{machine}",
         "--platform", f"manylinux_2_28_{machine}", *PYDEPS])
    shutil.rmtree(target / "bin", ignore_errors=True)  # console scripts with host shebangs
    marker.write_text(spec)
    return target


def _sdist() -> Path:
    """vllm-ascend's sdist from PyPI, downloaded with pip (its metadata step needs
    setuptools_scm, so pip runs from a small venv of its own)."""
    out = CACHE / "sdist"
    found = sorted(out.glob(f"vllm_ascend-{VLLM_ASCEND_VERSION}.tar.gz"))
    if found:
        return found[0]
    venv = CACHE / "sdist-venv"
    pip = venv / "bin" / "pip"
    if not pip.exists():
        run([sys.executable, "-m", "venv", str(venv)])
        run([str(pip), "install", "--quiet", "setuptools_scm", "setuptools", "wheel"])
    env = {**os.environ, **SDIST_ENV}
    run([str(pip), "download", "--quiet", "--no-deps", "--no-binary", ":all:",
         "--no-build-isolation", f"vllm-ascend=={VLLM_ASCEND_VERSION}", "-d", str(out)],
        env=env)
    return next(out.glob(f"vllm_ascend-{VLLM_ASCEND_VERSION}.tar.gz"))


def _examples() -> Path:
    """The sdist's ``examples/`` directory, extracted (the proxy and the DP launcher)."""
    root = CACHE / f"vllm-ascend-{VLLM_ASCEND_VERSION}"
    if (root / PROXY).is_file() and (root / LAUNCHER).is_file():
        return root
    archive = _sdist()
    shutil.rmtree(root, ignore_errors=True)
    prefix = f"vllm_ascend-{VLLM_ASCEND_VERSION}/examples/"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and
                   (m.isfile() or m.isdir())]
        for member in members:
            member.name = member.name[len(f"vllm_ascend-{VLLM_ASCEND_VERSION}/"):]
        tar.extractall(root, members=members, filter="data")
    return root


def rootfs_tar() -> Path:
    with locked():
        return _rootfs_tar()


def pydeps() -> Path:
    with locked():
        return _pydeps()


def examples() -> Path:
    with locked():
        return _examples()
