"""Dump the option table of ``vllm serve`` from vLLM's own argument parser (no accelerator).

Runs inside a venv that has that vLLM release installed (``scripts/flag-table`` builds one):
``python scripts/vllm_serve_flags.py`` prints the table as JSON, in the format of
``ascend_fleet/data/vllm-<version>-serve-flags.json``:

    {"vllm_version": ..., "ascend_plugin_quantization": true,
     "flags": [{"options", "dest", "type", "nargs", "choices", "default", "action"}, ...]}

``type`` names the converter vLLM's parser applies (int, float, str, json, json_dataclass,
json_or_str, human_readable_int, human_readable_int_or_auto, other; null for switches).
``--quantization`` carries no choices: the vllm-ascend plugin registers its ``ascend``
method at run time, so the table leaves the value to the plugin (ascend_plugin_quantization).

With ``--check ARGS...`` it parses ``vllm serve ARGS`` with the real parser instead and
prints ``{"ok": true, "model": ..., "values": {dest: value for every option given}}`` or
``{"ok": false, "error": ...}`` (exit 0 either way; argparse's own exit becomes ok=false).
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import version


def _cpu_platform() -> None:
    """vLLM infers its platform from the accelerator; there is none here: take the CPU's."""
    import vllm.platforms as platforms
    from vllm.platforms.cpu import CpuPlatform

    platforms._current_platform = CpuPlatform()


def serve_parser() -> argparse.ArgumentParser:
    _cpu_platform()
    from vllm.entrypoints.openai.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))


def _inner(fn):
    """Unwrap vLLM's optional_type/parse_type closures to the converter they call."""
    seen = 0
    while getattr(fn, "__closure__", None) and fn.__name__ in ("_optional_type", "_parse_type") and seen < 5:
        fn = next(c.cell_contents for c in fn.__closure__ if callable(c.cell_contents))
        seen += 1
    return fn


def type_name(fn) -> str | None:
    if fn is None:
        return None
    fn = _inner(fn)
    if fn in (int, float, str):
        return fn.__name__
    if fn is json.loads:
        return "json"
    name = getattr(fn, "__name__", "")
    return {
        "parse_dataclass": "json_dataclass",
        "union_dict_and_str": "json_or_str",
        "human_readable_int": "human_readable_int",
        "human_readable_int_or_auto": "human_readable_int_or_auto",
    }.get(name, "other")


def _plain(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)) and all(x is None or isinstance(x, (bool, int, float, str)) for x in value):
        return list(value)
    return repr(value)


def table(parser: argparse.ArgumentParser) -> dict:
    flags = []
    for action in parser._actions:
        if not action.option_strings:
            continue
        choices = None
        if action.choices is not None and action.dest != "quantization":
            choices = [_plain(c) for c in action.choices]
        flags.append(
            {
                "options": list(action.option_strings),
                "dest": action.dest,
                "type": type_name(action.type),
                "nargs": action.nargs,
                "choices": choices,
                "default": _plain(action.default),
                "action": type(action).__name__,
            }
        )
    return {"vllm_version": version("vllm"), "ascend_plugin_quantization": True, "flags": flags}


def check(parser: argparse.ArgumentParser, argv: list[str]) -> dict:
    """Parse ``vllm serve argv`` with vLLM's parser (the positional model included)."""
    errors: list[str] = []

    def error(message: str):  # argparse would print usage and exit 2
        errors.append(message)
        raise SystemExit(2)

    parser.error = error  # type: ignore[method-assign]
    try:
        ns = parser.parse_args(argv)
    except SystemExit:
        return {"ok": False, "error": errors[0] if errors else "exit"}
    except Exception as exc:  # a converter that raised something argparse does not catch
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    given = {}
    defaults = {a.dest: a.default for a in parser._actions}
    for dest, value in vars(ns).items():
        if dest in defaults and value == defaults[dest] and not _given(argv, parser, dest):
            continue
        given[dest] = value
    model = given.pop("model_tag", None)
    return {"ok": True, "model": model, "values": {k: _normal(v) for k, v in given.items()}}


def _normal(value):
    """A parsed value as JSON data: enums by name, config objects as their fields."""
    import dataclasses
    import enum

    if isinstance(value, enum.Enum):
        return value.name
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__config__": {f.name: _normal(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if hasattr(value, "model_dump"):
        return {"__config__": {k: _normal(v) for k, v in value.model_dump().items()}}
    if isinstance(value, dict):
        return {str(k): _normal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_normal(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _given(argv: list[str], parser: argparse.ArgumentParser, dest: str) -> bool:
    """Whether an option of ``dest`` appears in argv (also as an unambiguous prefix)."""
    opts = [o for a in parser._actions if a.dest == dest for o in a.option_strings]
    for tok in argv:
        word = tok.split("=", 1)[0]
        if not word.startswith("--"):
            continue
        if word in opts:
            return True
        matches = [o for a in parser._actions for o in a.option_strings if o.startswith(word)]
        if matches and all(m in opts for m in matches):
            return True
    return False


def main() -> int:
    out = sys.stdout
    sys.stdout = sys.stderr  # vLLM's logger writes to stdout: keep its lines out of the table
    try:
        parser = serve_parser()
    finally:
        sys.stdout = out
    if len(sys.argv) > 1 and sys.argv[1] == "--check":
        print(json.dumps(check(parser, sys.argv[2:])))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--check-many":
        # one JSON list of argv lists on stdin -> one JSON list of results
        cases = json.load(sys.stdin)
        print(json.dumps([check(parser, argv) for argv in cases]))
        return 0
    json.dump(table(parser), sys.stdout, indent=1)  # the shipped files' layout (no final newline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
