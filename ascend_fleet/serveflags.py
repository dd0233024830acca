"""Check a ``vllm serve`` command line against a dump of vLLM's own argument parser.

The dump (``data/vllm-<version>-serve-flags.json``) lists every option of ``vllm serve``
with its destination, type, nargs, choices and argparse action, as produced by the real
parser of that vLLM version. This module rebuilds the parts we rely on and is *stricter*
than vLLM where vLLM is silently lenient:

- an abbreviated flag is refused (vLLM accepts unique prefixes);
- a repeated flag is refused (vLLM silently keeps the last value);
- invalid JSON in a ``*-config`` flag is refused (vLLM refuses a ``{...}`` block that is not
  JSON, but keeps any other text as a plain string: the config is silently lost).

Used by the validate phase (the rendered commands are checked before any host is
touched), by the tests, and by the lab's engine stand-in.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_VERSION = "0.21.0"
_LOADED: dict[tuple[str, int, int], FlagSpec] = {}


class ServeFlagError(ValueError):
    """A ``vllm serve`` command line that vLLM would reject (or silently misread)."""


class UnknownFlagError(ServeFlagError):
    """A flag that this vLLM version does not have (vLLM: "unrecognized arguments")."""

    def __init__(self, option: str, version: str):
        super().__init__(f"unknown flag {option!r} for vllm serve (vLLM {version})")
        self.option = option


@dataclass(frozen=True)
class Flag:
    options: tuple[str, ...]
    dest: str
    type: str | None
    nargs: int | str | None
    choices: tuple[str, ...] | None
    action: str


@dataclass
class ServeCommand:
    """A parsed ``vllm serve`` command line."""

    model: str | None
    values: dict[str, Any] = field(default_factory=dict)  # dest -> parsed value
    given: list[tuple[str, Any]] = field(default_factory=list)  # (option as written, value)

    def by_option(self) -> dict[str, Any]:
        """Flags keyed by their canonical long option (``--max-model-len``)."""
        return dict(self.given)


class FlagSpec:
    """The option table of one vLLM version."""

    def __init__(self, data: dict[str, Any]):
        self.version: str = data.get("vllm_version", "unknown")
        self.flags: list[Flag] = []
        self._by_option: dict[str, tuple[Flag, bool]] = {}  # option -> (flag, negated)
        for raw in data["flags"]:
            flag = Flag(
                options=tuple(raw["options"]),
                dest=raw["dest"],
                type=raw["type"],
                nargs=raw["nargs"],
                choices=tuple(raw["choices"]) if raw["choices"] else None,
                action=raw["action"],
            )
            self.flags.append(flag)
            for opt in flag.options:
                negated = flag.action == "BooleanOptionalAction" and opt.startswith("--no-")
                self._by_option[opt] = (flag, negated)

    @classmethod
    def load(cls, version: str = DEFAULT_VERSION, path: str | Path | None = None) -> FlagSpec:
        src = Path(path) if path else DATA_DIR / f"vllm-{version}-serve-flags.json"
        if not src.is_file():
            raise FileNotFoundError(
                f"no flag table for vLLM {version}: {src} is missing (dump it from the vLLM parser of that version)"
            )
        st = src.stat()
        key = (str(src), st.st_mtime_ns, st.st_size)
        if key not in _LOADED:  # the table is read-only once built: one per file version
            _LOADED[key] = cls(json.loads(src.read_text()))
        return _LOADED[key]

    def lookup(self, option: str) -> tuple[Flag, bool] | None:
        return self._by_option.get(option)

    def canonical(self, flag: Flag) -> str:
        """The first long option of a flag (what the parsed command is keyed by)."""
        return next((o for o in flag.options if o.startswith("--")), flag.options[0])


_HUMAN_INT = re.compile(r"^(-?\d+(?:\.\d+)?)([kKmMgGtT]?)$")


def _human_int(text: str) -> int:
    """vLLM's human-readable int: ``25k`` = 25000, ``25K`` = 25600 (binary for capitals)."""
    match = _HUMAN_INT.match(text.strip())
    if not match:
        raise ValueError(f"not an integer (optionally with k/m/g/K/M/G suffix): {text!r}")
    number, suffix = match.groups()
    if not suffix:
        return int(number)
    decimal = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
    binary = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    factor = decimal.get(suffix) or binary[suffix]
    value = float(number) * factor
    if suffix.isupper() and value != int(value):
        raise ValueError(f"fractional value with a binary suffix: {text!r}")
    return int(value)


def _json(flag: Flag, option: str, text: str, require_object: bool) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ServeFlagError(f"{option}: invalid JSON ({exc.msg} at char {exc.pos}): {text!r}") from None
    if require_object and not isinstance(value, dict):
        raise ServeFlagError(f"{option}: expected a JSON object, got {type(value).__name__}")
    return value


def convert(flag: Flag, option: str, text: str) -> Any:
    """Convert one value the way the vLLM parser would, raising ServeFlagError if it would not."""
    kind = flag.type
    try:
        if kind == "int":
            value: Any = int(text)
        elif kind == "float":
            value = float(text)
        elif kind == "human_readable_int":
            value = _human_int(text)
        elif kind == "human_readable_int_or_auto":
            value = text if text == "auto" else _human_int(text)
        elif kind in ("json", "json_dataclass"):
            value = _json(flag, option, text, require_object=True)
        elif kind == "json_or_str":
            stripped = text.strip()
            # vLLM keeps text that is not JSON as a plain string, which for a config flag
            # silently drops the whole config: refuse it.
            if stripped.startswith(("{", "[")) or flag.dest.endswith("config"):
                value = _json(flag, option, text, require_object=flag.dest.endswith("config"))
            else:
                value = text
        else:
            value = text
    except ValueError as exc:
        if isinstance(exc, ServeFlagError):
            raise
        raise ServeFlagError(f"{option}: invalid {kind} value {text!r}") from None
    if flag.choices is not None and text not in flag.choices and value not in flag.choices:
        raise ServeFlagError(f"{option}: invalid choice {text!r} (choose from {', '.join(flag.choices)})")
    return value


def parse_serve_argv(argv: list[str], spec: FlagSpec) -> ServeCommand:
    """Parse the arguments after ``vllm serve``.

    ``argv`` is e.g. ``["/path/model", "--port", "8900", ...]``. Raises ServeFlagError for
    an unknown or abbreviated flag, a missing or bad value, invalid JSON, a repeated flag or
    a stray positional argument.
    """
    cmd = ServeCommand(model=None)
    seen: dict[str, str] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("-") or token == "-":
            if cmd.model is None and not cmd.given:
                cmd.model = token
                continue
            raise ServeFlagError(f"unexpected positional argument {token!r}")
        option, inline = ([*token.split("=", 1), None])[:2] if "=" in token else (token, None)
        found = spec.lookup(option)
        if found is None:
            longer = sorted({spec.canonical(f) for f in spec.flags for o in f.options if o.startswith(option)})
            if option.startswith("--") and longer:
                # vLLM takes a unique prefix for the whole flag: refused here, spelled out.
                raise ServeFlagError(
                    f"unknown flag {option!r} for vllm serve (vLLM {spec.version}): an abbreviation of "
                    f"{' or '.join(longer)}; write the flag out"
                )
            raise UnknownFlagError(option, spec.version)
        flag, negated = found
        canonical = spec.canonical(flag)
        if flag.dest in seen and flag.action != "_AppendAction":
            raise ServeFlagError(
                f"{option}: given twice (first as {seen[flag.dest]}); vLLM would silently keep only the last value"
            )
        seen[flag.dest] = option
        if flag.action == "_HelpAction":
            raise ServeFlagError(f"{option}: help flag in a serve command")
        if flag.nargs == 0:
            if inline is not None:
                raise ServeFlagError(f"{option}: takes no value, got {inline!r}")
            value: Any = not negated if flag.action == "BooleanOptionalAction" else True
            cmd.values[flag.dest] = value
            cmd.given.append((option if negated else canonical, value))
            continue
        values: list[str] = []
        if inline is not None:
            values.append(inline)
        if flag.nargs in (None, "?"):
            if not values and i < len(argv) and not _looks_like_flag(argv[i]):
                values.append(argv[i])
                i += 1
            if not values and flag.nargs is None:
                raise ServeFlagError(f"{option}: expected one value")
        elif flag.nargs in ("+", "*"):
            while i < len(argv) and not _looks_like_flag(argv[i]):
                values.append(argv[i])
                i += 1
            if not values and flag.nargs == "+":
                raise ServeFlagError(f"{option}: expected at least one value")
        converted = [convert(flag, option, v) for v in values]
        if flag.nargs in ("+", "*"):
            value = converted
        elif flag.action == "_AppendAction":
            value = cmd.values.get(flag.dest, []) + converted
        else:
            value = converted[0] if converted else None
        cmd.values[flag.dest] = value
        cmd.given.append((canonical, value))
    return cmd


def _looks_like_flag(token: str) -> bool:
    # Negative numbers are values, as argparse treats them when no option looks numeric.
    return token.startswith("-") and not re.match(r"^-\d", token)
