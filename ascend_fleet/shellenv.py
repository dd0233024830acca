"""The environment of the tutorial's shell, as the engine start reproduces it.

The tutorial runs its scripts in ``docker run -it IMAGE bash``. That shell has, on top of
the image's ENV: what the image's ENTRYPOINT sets up before any command (CANN's base
image sources its ``set_env.sh`` files there), then what the interactive bash reads from
``~/.bashrc``: the same ``set_env.sh`` files again and the two lines vllm-ascend's
Dockerfiles append (``LD_PRELOAD`` with jemalloc, ``LD_LIBRARY_PATH`` with Mooncake's
``/usr/local/lib``). A container started with a command (``bash launch.sh``) still goes
through the ENTRYPOINT but never reads ``~/.bashrc``: the recipe's ``shell_env`` block
declares those ``~/.bashrc`` lines per hardware kind, each with its source, and the engine
start script applies them.

The Dockerfiles write the two export lines with ``RUN echo "export X=...$X..."``: the
``$X`` and ``$(uname -m)`` in them are expanded when the image is BUILT. ``bashrc_lines``
does the same expansion with the image's configured environment and architecture (from
``docker image inspect``), so the start script carries the very lines of the image's
``~/.bashrc``.

Recipe format::

    shell_env:
      a2:
        source:                     # files the ~/.bashrc sources, in order
          - [/usr/local/Ascend/ascend-toolkit/set_env.sh, "<where this line comes from>"]
          - ["/usr/local/Ascend/nnal/atb/set_env.sh --cxx_abi=1", "<origin>"]   # with arguments
        export:                     # export lines appended to ~/.bashrc, in order
          - [LD_LIBRARY_PATH, "$LD_LIBRARY_PATH:/usr/local/lib", "<Dockerfile:line>"]
"""

from __future__ import annotations

import re
import shlex
from typing import Any

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
PATH = re.compile(r"/[A-Za-z0-9_./+-]*\Z")
# Arguments a sourced file may get (CANN 9.1.0's ~/.bashrc: `source .../atb/set_env.sh --cxx_abi=1`).
SOURCE_ARG = re.compile(r"--[A-Za-z0-9_-]+=[A-Za-z0-9_.-]+\Z")
# What a build-time `echo "..."` expands in the Dockerfiles' lines: $NAME, ${NAME}, $(uname -m).
EXPANSION = re.compile(r"\$\(uname -m\)|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
# `docker image inspect` .Architecture (Go's GOARCH) -> `uname -m`.
UNAME_M = {"arm64": "aarch64", "amd64": "x86_64", "386": "i686", "ppc64le": "ppc64le", "s390x": "s390x"}


class ShellEnvError(ValueError):
    """A malformed ``shell_env`` block in a recipe."""


def for_kind(recipe: dict[str, Any], kind: str) -> dict[str, list[list[str]]]:
    """The validated ``shell_env`` entry of a hardware kind (empty when the recipe has none)."""
    block = recipe.get("shell_env")
    if block is None:
        return {"source": [], "export": []}
    where = f"recipe {recipe.get('id', '?')}: shell_env"
    if not isinstance(block, dict) or kind not in block:
        raise ShellEnvError(f"{where}: no entry for hardware kind {kind!r} (expected one per kind)")
    entry = block[kind] or {}
    unknown = set(entry) - {"source", "export"}
    if unknown:
        raise ShellEnvError(f"{where}.{kind}: unknown keys {sorted(unknown)}; expected source, export")
    out: dict[str, list[list[str]]] = {"source": [], "export": []}
    for item in entry.get("source") or []:
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            raise ShellEnvError(f"{where}.{kind}.source: expected [file, origin], got {item!r}")
        path, *args = item[0].split(" ")
        if not PATH.match(path):
            raise ShellEnvError(f"{where}.{kind}.source: {path!r} is not an absolute path")
        bad = [a for a in args if not SOURCE_ARG.match(a)]
        if bad:
            raise ShellEnvError(f"{where}.{kind}.source: argument {bad[0]!r} of {path} is not --name=value")
        out["source"].append(list(item))
    for item in entry.get("export") or []:
        if not (isinstance(item, list) and len(item) == 3 and all(isinstance(x, str) for x in item)):
            raise ShellEnvError(f"{where}.{kind}.export: expected [NAME, value, origin], got {item!r}")
        if not NAME.match(item[0]):
            raise ShellEnvError(f"{where}.{kind}.export: {item[0]!r} is not a variable name")
        if "$" in EXPANSION.sub("", item[1]) or "`" in item[1]:
            raise ShellEnvError(
                f"{where}.{kind}.export {item[0]}: {item[1]!r} may only expand $NAME, ${{NAME}} "
                "and $(uname -m) (what the Dockerfile's echo expands at build time)"
            )
        out["export"].append(list(item))
    return out


def image_environment(env_list: list[str] | None) -> dict[str, str]:
    """``Config.Env`` of ``docker image inspect`` (["K=V", ...]) as a dict."""
    out: dict[str, str] = {}
    for item in env_list or []:
        name, _, value = str(item).partition("=")
        out[name] = value
    return out


def build_time_value(template: str, image_env: dict[str, str], architecture: str) -> str:
    """Expand a Dockerfile ``echo`` value the way the image build did."""
    if architecture not in UNAME_M:
        raise ShellEnvError(f"image architecture {architecture!r} unknown; expected one of {sorted(UNAME_M)}")

    def sub(match: re.Match) -> str:
        if match.group(0) == "$(uname -m)":
            return UNAME_M[architecture]
        return image_env.get(match.group(1) or match.group(2), "")

    return EXPANSION.sub(sub, template)


def bashrc_lines(shell_env: dict[str, Any], env_list: list[str] | None, architecture: str) -> list[str]:
    """The ``~/.bashrc`` lines of the image (source and export lines, in the image's order),
    values expanded as at build time and shell-quoted."""
    env = image_environment(env_list)
    lines = [f"source {shlex.join(path.split(' '))}" for path, _ in shell_env.get("source", [])]
    for name, template, _ in shell_env.get("export", []):
        lines.append(f"export {name}={shlex.quote(build_time_value(template, env, architecture))}")
    return lines
