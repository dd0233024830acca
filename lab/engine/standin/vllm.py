#!/usr/bin/env python3
"""``vllm`` stand-in for the lab: behaves like vLLM 0.21 (+ vllm-ascend) where the toolkit cares.

No NPU is used and no model is run. What it does check and simulate:

- the ``vllm serve`` command line, with the project's own flag checker
  (``ascend_fleet.serveflags``, fed with vLLM 0.21.0's option table): exit 2 and an
  argparse-like message on a bad command line;
- the model directory: config.json, tokenizer files, ``quant_model_description.json`` for
  ``--quantization ascend``, and every shard named by ``model.safetensors.index.json``,
  whose safetensors headers are validated and whose bytes are all read (so a bigger model
  loads more slowly; ``ASCEND_FLEET_LAB_LOAD_MBPS`` caps the read rate);
- the NPUs: ``ASCEND_RT_VISIBLE_DEVICES`` must name devices that exist as
  ``<dev dir>/davinciN`` (dev dir: ``$ASCEND_FLEET_LAB_DEVICE_DIR``, default ``/dev``), as
  many as the rank needs (tp, or dp x tp for single-process data parallel);
- external data parallel (``--data-parallel-rank``): rank 0 hosts a coordinator on
  ``--data-parallel-address:--data-parallel-rpc-port``; the others register with it; nobody
  serves until every rank has joined and loaded; a rank still waiting after
  ``VLLM_ENGINE_READY_TIMEOUT_S`` (default 600) exits 1 with vLLM's TimeoutError; a rank
  that dies later takes the whole group down;
- PD disaggregation (``--kv-transfer-config`` with a Mooncake connector): the kv side-channel
  ports ``kv_port + global_dp_rank * tp + tp_rank`` are bound (a collision fails with
  "Address already in use"); ``kv_connector_extra_config`` must match this rank's dp/tp for
  its role; ``recompute_scheduler_enable`` is refused unless ``kv_role`` is ``kv_consumer``;
  a prefill leg (``kv_transfer_params.do_remote_decode``) answers with ``kv_transfer_params``
  naming its side channel, and the decode leg pulls from that side channel before answering
  (so a broken network between P and D shows up as a failed request);
- Mooncake's library: a rank with a Mooncake connector imports ``mooncake.engine``, whose
  ``ascend_transport.so`` lives in ``/usr/local/lib`` of the image and is found only through
  ``LD_LIBRARY_PATH`` (the image's ``~/.bashrc`` adds it); without it the rank fails with
  Mooncake's import error (vllm-project/vllm-ascend#6949);
- CANN's process log: every start writes a plog file under ``~/ascend/log/debug/plog/``
  (``$ASCEND_PROCESS_LOG_PATH`` instead when set), as CANN does;
- the OpenAI server: ``/health``, ``/v1/models``, ``/v1/completions``,
  ``/v1/chat/completions`` (JSON and SSE), ``/version``, ``/metrics``, with a deterministic
  answer, and vLLM-like log lines on stdout.

Other knobs for the lab: ``ASCEND_FLEET_LAB_INIT_SECONDS`` (extra start-up time, default 0)
and ``ASCEND_FLEET_LAB_KV_BIND`` (address the side channel binds, default 0.0.0.0).

Stdlib only, so it runs in the minimal engine image and in the tests as a plain process.
Layout: this file lives at ``<root>/lab/engine/standin/vllm.py`` both in the repository and
in the image (root ``/opt/ascend-fleet-lab``), next to ``<root>/ascend_fleet/serveflags.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from ascend_fleet.serveflags import FlagSpec, ServeFlagError, UnknownFlagError, parse_serve_argv  # noqa: E402

# The vLLM version impersonated: written beside this file by lab/engine/build (one image
# per vllm-ascend release); the flag table of that version decides which flags exist.
_VERSION_FILE = Path(__file__).resolve().parent / "VERSION"
VERSION = _VERSION_FILE.read_text().strip() if _VERSION_FILE.is_file() else "0.21.0"
ANSWER = (
    "I am DeepSeek-V4-Flash, served by the ascend-fleet lab engine: a stand-in for vLLM "
    "{version} with vllm-ascend. No NPU computed this answer, but every step that led here "
    "(flags, weights, devices, data-parallel group, KV transfer) was checked like the real "
    "engine would. You said: {prompt}"
)
MOONCAKE_CONNECTORS = {
    "MooncakeHybridConnector", "MooncakeConnectorV1", "MooncakeConnector",
    "MooncakeLayerwiseConnector",
}
OTHER_CONNECTORS = {"MooncakeConnectorStoreV1", "AscendStoreConnector", "LMCacheConnectorV1",
                    "NixlConnector", "SharedStorageConnector", "MultiConnector"}
DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
DEFAULT_DP_RPC_PORT = 29550
# Mooncake (built with USE_ASCEND_DIRECT, `make install` into /usr/local, no ldconfig).
MOONCAKE_LIBRARY = "ascend_transport.so"
DEFAULT_KV_PORT = 14579


class EngineError(Exception):
    """A startup failure: printed as ``<kind>: <message>`` on stderr, exit status 1."""

    def __init__(self, message: str, kind: str = "RuntimeError") -> None:
        super().__init__(message)
        self.kind = kind


# -- logging like vLLM ----------------------------------------------------------------------

_log_lock = threading.Lock()


def log(level: str, where: str, message: str) -> None:
    """``INFO 11-29 14:50:01 [api_server.py:1] message`` on stdout, as vLLM logs."""
    stamp = time.strftime("%m-%d %H:%M:%S")
    with _log_lock:
        print(f"{level} {stamp} [{where}] {message}", flush=True)


def uvicorn_log(message: str) -> None:
    with _log_lock:
        print(f"INFO:     {message}", flush=True)


def fail(error: EngineError) -> int:
    log("ERROR", "core.py:708", "EngineCore failed to start.")
    with _log_lock:
        print(f"{error.kind}: {error}", file=sys.stderr, flush=True)
    return 1


# -- checks before start ----------------------------------------------------------------------

def env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def check_devices(needed: int) -> list[int]:
    """The NPUs this rank would use; raise EngineError like the Ascend runtime would."""
    dev_dir = Path(os.environ.get("ASCEND_FLEET_LAB_DEVICE_DIR", "/dev"))
    present = sorted(
        int(p.name[len("davinci"):]) for p in dev_dir.glob("davinci*")
        if p.name[len("davinci"):].isdigit()
    )
    visible_env = os.environ.get("ASCEND_RT_VISIBLE_DEVICES", "").strip()
    if visible_env:
        try:
            visible = [int(x) for x in visible_env.split(",") if x.strip()]
        except ValueError:
            raise EngineError(f"invalid ASCEND_RT_VISIBLE_DEVICES={visible_env!r}") from None
        for dev in visible:
            if dev not in present:
                raise EngineError(
                    f"NPU {dev} from ASCEND_RT_VISIBLE_DEVICES={visible_env} is not available: "
                    f"{dev_dir}/davinci{dev} does not exist (was it passed with --device?). "
                    "aclrtSetDevice failed, error code is 107001"
                )
        if len(visible) != needed:
            raise EngineError(
                f"this rank needs exactly {needed} NPUs but ASCEND_RT_VISIBLE_DEVICES="
                f"{visible_env} makes {len(visible)} visible"
            )
        used = visible
    else:
        if len(present) < needed:
            raise EngineError(
                f"this rank needs {needed} NPUs but only {len(present)} are present "
                f"({dev_dir}/davinci*)"
            )
        used = present[:needed]
    for helper in ("davinci_manager", "devmm_svm", "hisi_hdc"):
        if not (dev_dir / helper).exists():
            log("WARNING", "platform.py:118", f"{dev_dir}/{helper} is missing")
    return used


def check_kv_config(kv: dict | None, extra: dict, dp: int, tp: int) -> dict | None:
    """Validate --kv-transfer-config and the additional-config rules that depend on it."""
    recompute = bool(extra.get("recompute_scheduler_enable"))
    role = (kv or {}).get("kv_role")
    if recompute and role != "kv_consumer":
        raise EngineError(
            "recompute_scheduler_enable is only supported on decode nodes of a PD "
            f"disaggregated deployment (kv_role=kv_consumer), got kv_role={role}",
            "ValueError",
        )
    if kv is None:
        return None
    connector = kv.get("kv_connector")
    if connector not in MOONCAKE_CONNECTORS | OTHER_CONNECTORS:
        raise EngineError(f"Unsupported connector type {connector!r}", "ValueError")
    roles = ["kv_producer", "kv_consumer", "kv_both"]
    if role not in roles:
        raise EngineError(f"Unsupported kv_role: {role}. Supported roles are {roles}",
                          "ValueError")
    if connector not in MOONCAKE_CONNECTORS:
        return None  # only Mooncake P2P is simulated
    try:
        kv_port = int(kv.get("kv_port", DEFAULT_KV_PORT))
    except (TypeError, ValueError):
        raise EngineError(f"kv_port must be an integer, got {kv.get('kv_port')!r}",
                          "ValueError") from None
    sides = kv.get("kv_connector_extra_config") or {}
    sizes = {}
    for side in ("prefill", "decode"):
        conf = sides.get(side)
        if not isinstance(conf, dict) or "dp_size" not in conf or "tp_size" not in conf:
            raise EngineError(
                f"kv_connector_extra_config must give {side}.dp_size and {side}.tp_size",
                "AssertionError",
            )
        sizes[side] = (int(conf["dp_size"]), int(conf["tp_size"]))
    if sizes["prefill"][1] < sizes["decode"][1]:
        raise EngineError("prefill tp_size must be >= decode tp_size", "AssertionError")
    mine = {"kv_producer": "prefill", "kv_consumer": "decode"}.get(role)
    if mine and sizes[mine] != (dp, tp):
        raise EngineError(
            f"kv_connector_extra_config.{mine} says dp_size={sizes[mine][0]}, "
            f"tp_size={sizes[mine][1]} but this {role} runs with data_parallel_size={dp}, "
            f"tensor_parallel_size={tp}",
            "AssertionError",
        )
    return {"connector": connector, "role": role, "kv_port": kv_port,
            "engine_id": str(kv.get("engine_id", uuid.uuid4())), "sizes": sizes}


def read_safetensors(path: Path, expected: set[str]) -> int:
    """Validate one shard's header and read all of its data; return the bytes read."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise EngineError(f"Error while deserializing header: HeaderTooSmall ({path})",
                              "safetensors_rust.SafetensorError")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 * 1024 * 1024):
            raise EngineError(f"Error while deserializing header: HeaderTooLarge ({path})",
                              "safetensors_rust.SafetensorError")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise EngineError(f"Error while deserializing header: InvalidHeader ({path})",
                              "safetensors_rust.SafetensorError") from None
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        offset = 0
        for name, info in sorted(tensors.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            begin, end = info["data_offsets"]
            count = 1
            for dim in info["shape"]:
                count *= dim
            if begin != offset or end - begin != count * DTYPE_SIZES.get(info["dtype"], 0):
                raise EngineError(
                    f"Error while deserializing header: InvalidOffset({name!r}) ({path})",
                    "safetensors_rust.SafetensorError")
            offset = end
        if 8 + n + offset != size:
            raise EngineError(
                f"Error while deserializing header: MetadataIncompleteBuffer ({path})",
                "safetensors_rust.SafetensorError")
        missing = expected - set(tensors)
        if missing:
            raise EngineError(f"tensor {min(missing)!r} of the index is not in {path}",
                              "KeyError")
        # Read every byte, as loading the weights does. ASCEND_FLEET_LAB_LOAD_MBPS caps the
        # rate to make a big checkpoint load visibly slower (default: as fast as the disk).
        rate = env_float("ASCEND_FLEET_LAB_LOAD_MBPS", 0) * 1024 * 1024
        began = time.monotonic()
        read = 0
        while chunk := fh.read(4 * 1024 * 1024):
            read += len(chunk)
            if rate > 0:
                ahead = read / rate - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)
    return read


def load_model(model: str, quantization: str | None) -> tuple[dict, int]:
    """Check and read the model directory like vLLM's loader; return (config, bytes read)."""
    path = Path(model)
    if not (path / "config.json").is_file():
        raise EngineError(
            f"Invalid repository ID or local directory specified: '{model}'. "
            "For a local directory: it must contain config.json",
            "ValueError",
        )
    config = json.loads((path / "config.json").read_text())
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise EngineError(f"Can't load tokenizer for '{model}'", "OSError")
    if quantization == "ascend" and not (path / "quant_model_description.json").is_file():
        raise EngineError(
            f"quant_model_description.json not found in {model}: --quantization ascend "
            "needs a checkpoint quantized for Ascend", "FileNotFoundError")
    index_path = path / "model.safetensors.index.json"
    if index_path.is_file():
        weight_map = json.loads(index_path.read_text())["weight_map"]
        shards: dict[str, set[str]] = {}
        for tensor, shard in weight_map.items():
            shards.setdefault(shard, set()).add(tensor)
    else:
        shards = {p.name: set() for p in sorted(path.glob("*.safetensors"))}
        if not shards:
            raise EngineError(f"Cannot find any model weights with `{model}`", "RuntimeError")
    for shard in shards:
        if not (path / shard).is_file():
            raise EngineError(f"[Errno 2] No such file or directory: '{path / shard}'",
                              "FileNotFoundError")
    total = 0
    began = time.monotonic()
    for i, (shard, tensors) in enumerate(sorted(shards.items()), start=1):
        total += read_safetensors(path / shard, tensors)
        log("INFO", "default_loader.py:268",
            f"Loading safetensors checkpoint shards: {i}/{len(shards)} done")
    log("INFO", "default_loader.py:279",
        f"Loading weights took {time.monotonic() - began:.2f} seconds")
    return config, total


# -- external data parallel: the coordinator on rank 0 and the clients ------------------------

def _send(sock: socket.socket, message: dict) -> None:
    sock.sendall((json.dumps(message) + "\n").encode())


class Coordinator:
    """Rank 0's registry of the DP group (TCP, one JSON message per line)."""

    def __init__(self, address: str, port: int, dp_size: int, tp: int) -> None:
        self.dp_size = dp_size
        self.tp = tp
        self.lock = threading.Lock()
        self.members: dict[int, socket.socket | None] = {}  # rank -> connection (0: None)
        self.loaded: set[int] = set()
        self.ready = threading.Event()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind((address, port))
        except OSError as exc:
            raise EngineError(
                f"[Errno {exc.errno}] {exc.strerror}: cannot bind the data parallel "
                f"coordinator to {address}:{port} (--data-parallel-address must be an "
                "address of this host)", "OSError") from None
        self.listener.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def join_self(self) -> None:
        with self.lock:
            self.members[0] = None

    def loaded_self(self) -> None:
        with self.lock:
            self.loaded.add(0)
            self._maybe_ready()

    def _accept(self) -> None:
        while True:
            conn, _ = self.listener.accept()
            threading.Thread(target=self._member, args=(conn,), daemon=True).start()

    def _member(self, conn: socket.socket) -> None:
        rank = None
        try:
            reader = conn.makefile("r")
            for line in reader:
                msg = json.loads(line)
                if msg.get("op") == "join":
                    rank = self._join(conn, msg)
                    if rank is None:
                        return
                elif msg.get("op") == "loaded" and rank is not None:
                    with self.lock:
                        self.loaded.add(rank)
                        self._maybe_ready()
        except (OSError, ValueError):
            pass
        finally:
            conn.close()
            if rank is not None:
                self._left(rank)

    def _join(self, conn: socket.socket, msg: dict) -> int | None:
        rank = int(msg["rank"])
        with self.lock:
            error = None
            if int(msg["dp_size"]) != self.dp_size:
                error = (f"rank {rank} runs with --data-parallel-size {msg['dp_size']}, "
                         f"the group has {self.dp_size}")
            elif int(msg.get("tp", self.tp)) != self.tp:
                error = (f"rank {rank} runs with --tensor-parallel-size {msg['tp']}, "
                         f"rank 0 with {self.tp}")
            elif not 0 < rank < self.dp_size:
                error = f"rank {rank} is outside [1, {self.dp_size})"
            elif rank in self.members:
                error = f"data parallel rank {rank} is already registered"
            if error:
                _send(conn, {"op": "rejected", "error": error})
                log("ERROR", "coordinator.py:88", f"DP coordinator refused a rank: {error}")
                return None
            self.members[rank] = conn
            log("INFO", "coordinator.py:96",
                f"DP rank {rank} joined from {conn.getpeername()[0]} "
                f"({len(self.members)}/{self.dp_size} ranks)")
            _send(conn, {"op": "joined", "members": len(self.members)})
            return rank

    def _maybe_ready(self) -> None:  # call with self.lock held
        if len(self.loaded) == self.dp_size and not self.ready.is_set():
            for conn in self.members.values():
                if conn is not None:
                    _send(conn, {"op": "ready"})
            self.ready.set()

    def _left(self, rank: int) -> None:
        with self.lock:
            self.members.pop(rank, None)
            self.loaded.discard(rank)
            started = self.ready.is_set()
        if started:
            # A member of a running group died: the collectives of every rank would fail.
            log("ERROR", "core.py:1012", f"DP rank {rank} died; the data parallel group is lost")
            print(f"RuntimeError: data parallel rank {rank} is gone", file=sys.stderr, flush=True)
            os._exit(1)
        log("WARNING", "coordinator.py:120", f"DP rank {rank} left before the group was ready")


class Member:
    """A rank > 0: registers with the coordinator and waits for the whole group."""

    def __init__(self, address: str, port: int, rank: int, dp_size: int, tp: int,
                 deadline: float):
        self.sock = None
        while self.sock is None:
            try:
                self.sock = socket.create_connection((address, port), timeout=2)
            except OSError:
                if time.monotonic() > deadline:
                    raise_ready_timeout()
                time.sleep(0.5)
        self.sock.settimeout(None)
        self.reader = self.sock.makefile("r")
        _send(self.sock, {"op": "join", "rank": rank, "dp_size": dp_size, "tp": tp})
        answer = self._next(deadline)
        if answer.get("op") == "rejected":
            raise EngineError(f"the data parallel coordinator refused this rank: "
                              f"{answer['error']}")

    def _next(self, deadline: float) -> dict:
        self.sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            line = self.reader.readline()
        except TimeoutError:
            raise_ready_timeout()
        except OSError:
            line = ""
        if not line:
            raise EngineError("lost the connection to the data parallel coordinator (rank 0)")
        return json.loads(line)

    def loaded(self, deadline: float) -> None:
        _send(self.sock, {"op": "loaded"})
        while self._next(deadline).get("op") != "ready":
            pass
        self.sock.settimeout(None)
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        # Rank 0 gone after start: this rank cannot work alone.
        try:
            while self.reader.readline():
                pass
        except OSError:
            pass
        log("ERROR", "core.py:1012", "lost the data parallel coordinator (rank 0); exiting")
        print("RuntimeError: data parallel group is lost", file=sys.stderr, flush=True)
        os._exit(1)


def raise_ready_timeout() -> None:
    raise EngineError("Timed out waiting for engines to send initial message on input socket.",
                      "TimeoutError")


# -- the KV side channel (Mooncake handshake port) ----------------------------------------------

class SideChannel:
    """The ports ``kv_port + dp_rank * tp + tp_rank``: answer pulls of finished prefills."""

    def __init__(self, kv: dict, dp_rank: int, tp: int) -> None:
        self.kv = kv
        self.base = kv["kv_port"] + dp_rank * tp
        self.blocks: dict[int, str] = {}  # block id -> request id (prefills kept for D)
        self.lock = threading.Lock()
        self.pulls = 0
        bind_ip = os.environ.get("ASCEND_FLEET_LAB_KV_BIND", "0.0.0.0")
        self.sockets = []
        for tp_rank in range(tp):
            port = self.base + tp_rank
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            # As ZMQ does: a restart may rebind at once (TIME_WAIT), but a port another
            # process is listening on still fails with "Address already in use".
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((bind_ip, port))
            except OSError as exc:
                for other in self.sockets:
                    other.close()
                raise EngineError(f"{exc.strerror} (addr='tcp://{bind_ip}:{port}')",
                                  "zmq.error.ZMQError") from None
            sock.listen(64)
            self.sockets.append(sock)
            threading.Thread(target=self._accept, args=(sock,), daemon=True).start()
        log("INFO", "mooncake_connector.py:512",
            f"{kv['connector']} {kv['role']} engine_id={kv['engine_id']} side channel on "
            f"ports {self.base}-{self.base + tp - 1}")

    def remember(self, request_id: str, count: int) -> list[int]:
        ids = [random.randrange(1, 1 << 30) for _ in range(count)]
        with self.lock:
            for block in ids:
                self.blocks[block] = request_id
        return ids

    def _accept(self, sock: socket.socket) -> None:
        while True:
            conn, _ = sock.accept()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                msg = json.loads(conn.makefile("r").readline() or "{}")
            except (OSError, ValueError):
                return
            if str(msg.get("engine_id")) == self.kv["engine_id"]:
                answer = {"ok": False, "error": f"Conflict engine id {self.kv['engine_id']}"}
            else:
                with self.lock:
                    known = all(b in self.blocks for b in msg.get("block_ids", []))
                    self.pulls += 1
                answer = {"ok": known, "engine_id": self.kv["engine_id"]}
                if not known:
                    answer["error"] = "unknown block ids"
            with contextlib.suppress(OSError):  # the puller may have given up already
                _send(conn, answer)


def pull_kv(params: dict, my_engine_id: str) -> str:
    """The decode side of a transfer: contact every prefill tp rank named in the params."""
    for key in ("remote_engine_id", "remote_host", "remote_port", "remote_block_ids"):
        if params.get(key) in (None, ""):
            raise RuntimeError(f"kv_transfer_params without {key}: {params}")
    timeout = env_float("ASCEND_CONNECT_TIMEOUT", 3000) / 1000
    host, base = params["remote_host"], int(params["remote_port"])
    for tp_rank in range(int(params.get("remote_tp_size", 1))):
        try:
            with socket.create_connection((host, base + tp_rank), timeout=timeout) as conn:
                conn.settimeout(timeout)
                _send(conn, {"op": "pull", "engine_id": my_engine_id,
                             "block_ids": params["remote_block_ids"]})
                answer = json.loads(conn.makefile("r").readline() or "{}")
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"KV transfer from {host}:{base + tp_rank} failed: {exc}") from None
        if not answer.get("ok"):
            raise RuntimeError(f"KV transfer from {host}:{base + tp_rank} refused: "
                               f"{answer.get('error')}")
    return f"{host}:{base}"


# -- the OpenAI-compatible server ----------------------------------------------------------------

class Engine:
    """Everything the HTTP handler needs to answer."""

    def __init__(self, names: list[str], model: str, max_model_len: int,
                 api_keys: list[str] | None, kv: dict | None, side: SideChannel | None,
                 dp_rank: int, tp: int, host_ip: str) -> None:
        self.names, self.model, self.max_model_len = names, model, max_model_len
        self.api_keys, self.kv, self.side = api_keys, kv, side
        self.dp_rank, self.tp, self.host_ip = dp_rank, tp, host_ip
        self.served = 0
        self.kv_pulls = 0
        self.running = 0
        self.lock = threading.Lock()


def words(text: str) -> list[str]:
    return text.split()


def prompt_text(body: dict, chat: bool) -> str:
    if chat:
        parts = []
        for message in body.get("messages") or []:
            content = message.get("content")
            if isinstance(content, list):  # [{"type": "text", "text": ...}]
                content = " ".join(c.get("text", "") for c in content if isinstance(c, dict))
            parts.append(str(content or ""))
        return " ".join(parts)
    prompt = body.get("prompt", "")
    return " ".join(map(str, prompt)) if isinstance(prompt, list) else str(prompt)


# -- answering: the lab's evaluation datasets, token rate, lab switches ------------------------

SWITCHES_FILE = "/root/.cache/ascend-fleet-lab/engine.json"
SWITCH_DEFAULTS = {"accuracy": 0.95, "token_rate": 200.0, "prefill_rate": 20000.0,
                   "kv_broken": [], "crash_rank": []}
_switches: dict = {"mtime": None, "values": dict(SWITCH_DEFAULTS)}
_answer_keys: dict = {}


def switches() -> dict:
    """The lab switches (``labctl engine``): a JSON file on the node's shared cache, re-read
    when it changes. ``accuracy`` (0..1) of the answers to the evaluation datasets,
    ``token_rate`` (tokens/s of one request), ``prefill_rate`` (prompt tokens/s before the
    first token), ``kv_broken`` ([[prefill address, decode address], ...]: KV paths down),
    ``crash_rank`` ([[node address, DP rank], ...]: that rank dies while loading the model)."""
    path = Path(os.environ.get("ASCEND_FLEET_LAB_SWITCHES", SWITCHES_FILE))
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = None
    if mtime != _switches["mtime"]:
        values = dict(SWITCH_DEFAULTS)
        if mtime is not None:
            with contextlib.suppress(OSError, ValueError):
                loaded = json.loads(path.read_text())
                if isinstance(loaded, dict):
                    values.update({k: v for k, v in loaded.items() if k in SWITCH_DEFAULTS})
        _switches.update(mtime=mtime, values=values)
    return _switches["values"]


def answer_key(model: str) -> dict:
    """``lab_eval_answers.json`` of the model directory: {dataset: {question: answer}},
    with each dataset's questions ranked by hash (the first ``accuracy`` share is answered
    right, so the score is exact: 19 of 20 at 0.95)."""
    if model not in _answer_keys:
        key = {}
        with contextlib.suppress(OSError, ValueError):
            raw = json.loads((Path(model) / "lab_eval_answers.json").read_text())
            for dataset, qa in raw.items():
                ranked = sorted(qa, key=lambda q: hashlib.sha256(q.encode()).hexdigest())
                key[dataset] = {" ".join(q.split()): (str(qa[q]), i, len(ranked))
                                for i, q in enumerate(ranked)}
        _answer_keys[model] = key
    return _answer_keys[model]


def lab_answer(model: str, prompt: str, accuracy: float) -> str | None:
    """The reply to a question of the lab's datasets (the one asked last in the prompt)."""
    flat = " ".join(prompt.split())
    best = None
    for dataset, qa in answer_key(model).items():
        for question, entry in qa.items():
            at = flat.rfind(question)
            if at >= 0 and (best is None or at > best[0]):
                best = (at, dataset, entry)
    if best is None:
        return None
    _, dataset, (answer, rank, total) = best
    right = rank < round(accuracy * total)
    if dataset == "gsm8k":
        value = answer if right else str(int(answer) + 1)
        return f"Multiply the boxes by their size, then subtract what was given away.\nanswer:{value}"
    options = dict(re.findall(r"\(([ABCD])\)\s*([^\n]*)", prompt))
    letters = [k for k, v in options.items() if v.strip() == answer]
    letter = letters[0] if letters else "A"
    if not right:
        letter = "ABCD"[("ABCD".index(letter) + 1) % 4]
    return f"The charge is protons minus electrons. The correct answer is ({letter})"


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def get_request(self):
        # As uvicorn: no Nagle delay on small SSE chunks (else ~40 ms more per token).
        conn, address = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, address

    def handle_error(self, request, client_address) -> None:
        # A client that gave up (e.g. a health probe queued while the engine was starting)
        # is not an engine error; uvicorn does not print a traceback for it either.
        pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "uvicorn"
    engine: Engine

    def log_message(self, fmt: str, *args) -> None:
        pass  # access lines are written by _access, uvicorn style

    def _access(self, status: int) -> None:
        phrase = self.responses.get(status, ("",))[0]
        uvicorn_log(f'{self.client_address[0]}:{self.client_address[1]} - '
                    f'"{self.command} {self.path} HTTP/1.1" {status} {phrase}')

    def _send_json(self, status: int, body) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)
        self._access(status)

    def _error(self, status: int, message: str, kind: str = "BadRequestError") -> None:
        self._send_json(status, {"error": {"message": message, "type": kind, "param": None,
                                           "code": status}})

    def do_GET(self) -> None:
        e = self.engine
        if self.path == "/health":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            self._access(200)
        elif self.path == "/v1/models":
            if not self._authorized():
                return
            data = [{"id": name, "object": "model", "created": int(time.time()),
                     "owned_by": "vllm", "root": e.model, "parent": None,
                     "max_model_len": e.max_model_len, "permission": []} for name in e.names]
            self._send_json(200, {"object": "list", "data": data})
        elif self.path == "/version":
            self._send_json(200, {"version": VERSION})
        elif self.path == "/metrics":
            name = e.names[0]
            text = (f'vllm:request_success_total{{model_name="{name}"}} {e.served}\n'
                    f'vllm:lab_kv_pulls_total{{model_name="{name}"}} {e.kv_pulls}\n'
                    f'vllm:num_requests_running{{model_name="{name}"}} {e.running}\n'
                    f'vllm:num_requests_waiting{{model_name="{name}"}} 0\n').encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)
            self._access(200)
        else:
            self._send_json(404, {"detail": "Not Found"})

    def _authorized(self) -> bool:
        keys = self.engine.api_keys
        if keys and self.headers.get("Authorization", "") not in {f"Bearer {k}" for k in keys}:
            self._send_json(401, {"error": "Unauthorized"})
            return False
        return True

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path == "/reset_prefix_cache":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            self._access(200)
            return
        if self.path not in ("/v1/completions", "/v1/chat/completions"):
            self._send_json(404, {"detail": "Not Found"})
            return
        if not self._authorized():
            return
        try:
            body = json.loads(raw or b"{}")
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            self._error(400, "request body is not a JSON object")
            return
        # In progress, as vLLM's num_requests_running gauge (a drain waits for 0).
        with self.engine.lock:
            self.engine.running += 1
        try:
            self._complete(body, chat=self.path.endswith("chat/completions"))
        finally:
            with self.engine.lock:
                self.engine.running -= 1

    def _complete(self, body: dict, chat: bool) -> None:
        e = self.engine
        model = body.get("model") or e.names[0]
        if model not in e.names:
            self._error(404, f"The model `{model}` does not exist.", "NotFoundError")
            return
        prompt = prompt_text(body, chat)
        prompt_tokens = len(words(prompt)) + (4 if chat else 0)
        default_max = 16 if not chat else e.max_model_len - prompt_tokens
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or default_max
        if not isinstance(max_tokens, int) or max_tokens < 1:
            self._error(400, f"max_tokens must be at least 1, got {max_tokens}.")
            return
        if prompt_tokens + max_tokens > e.max_model_len:
            self._error(400, f"This model's maximum context length is {e.max_model_len} "
                        f"tokens. However, you requested {prompt_tokens + max_tokens} tokens "
                        f"({prompt_tokens} in the messages, {max_tokens} in the completion).")
            return

        params = body.get("kv_transfer_params") or {}
        answer_params = None
        if e.kv and params.get("do_remote_decode") and e.side is not None:
            # Prefill leg of a PD request: keep the "KV blocks" for the decode side to pull.
            request_id = self.headers.get("X-Request-Id") or uuid.uuid4().hex
            answer_params = {
                "do_remote_prefill": True, "do_remote_decode": False,
                "remote_block_ids": e.side.remember(request_id, 4),
                "remote_engine_id": e.kv["engine_id"], "remote_host": e.host_ip,
                "remote_port": e.side.base, "remote_tp_size": e.tp,
                "remote_dp_rank": e.dp_rank, "remote_request_id": request_id,
            }
        elif e.kv and params.get("do_remote_prefill"):
            # Decode leg: fetch the KV cache from the prefill engine named in the params.
            try:
                if [str(params.get("remote_host")), e.host_ip] in switches()["kv_broken"]:
                    # lab switch: this P->D path is down (as an unreachable RDMA peer)
                    raise RuntimeError(f"KV transfer from {params.get('remote_host')}:"
                                       f"{params.get('remote_port')} failed: [Errno 113] "
                                       "No route to host")
                source = pull_kv(params, e.kv["engine_id"])
            except RuntimeError as exc:
                log("ERROR", "mooncake_connector.py:1033", str(exc))
                self._error(500, str(exc), "InternalServerError")
                return
            with e.lock:
                e.kv_pulls += 1
            log("INFO", "mooncake_connector.py:1050",
                f"received KV cache of {len(params['remote_block_ids'])} blocks from engine "
                f"{params['remote_engine_id']} at {source}")
        elif e.kv and e.kv["role"] == "kv_consumer":
            log("WARNING", "mooncake_connector.py:980",
                "request without kv_transfer_params on a decode instance: prefilling locally")

        lab = switches()
        text = lab_answer(e.model, prompt, float(lab["accuracy"]))
        if text is None:
            text = ANSWER.format(version=VERSION, prompt=" ".join(words(prompt)[:24]))
        tokens = words(text)
        if body.get("ignore_eos") and len(tokens) < max_tokens:  # benchmarks: fixed lengths
            tokens = (tokens * (max_tokens // len(tokens) + 1))[:max_tokens]
        out = tokens[:max_tokens]
        finish = "length" if len(out) < len(tokens) or body.get("ignore_eos") else "stop"
        # The "compute": the prompt at prefill_rate, then one token every 1/token_rate s.
        prefill_s = prompt_tokens / max(float(lab["prefill_rate"]), 1e-3)
        token_s = 1 / max(float(lab["token_rate"]), 1e-3)
        with e.lock:
            e.served += 1
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + len(out),
                 "completion_tokens": len(out), "prompt_tokens_details": None}
        if body.get("stream"):
            self._stream(ident, model, out, finish, chat, usage, body, prefill_s, token_s)
            return
        time.sleep(prefill_s + token_s * len(out))
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": " ".join(out),
                                              "reasoning_content": None, "tool_calls": []},
                      "logprobs": None, "finish_reason": finish, "stop_reason": None}
        else:
            choice = {"index": 0, "text": " ".join(out), "logprobs": None,
                      "finish_reason": finish, "stop_reason": None, "prompt_logprobs": None}
        self._send_json(200, {
            "id": ident, "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": [choice], "usage": usage,
            "prompt_logprobs": None, "kv_transfer_params": answer_params,
        })

    def _stream(self, ident, model, out, finish, chat, usage, body, prefill_s=0.0,
                token_s=0.0) -> None:
        """Server-sent events, one token per event, then ``data: [DONE]`` (chunked)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        kind = "chat.completion.chunk" if chat else "text_completion"
        created = int(time.time())

        def event(payload) -> None:
            data = b"data: " + (payload if isinstance(payload, bytes)
                                else json.dumps(payload).encode()) + b"\n\n"
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def chunk(piece: str | None, reason: str | None, first: bool = False) -> dict:
            if chat:
                delta = {"role": "assistant", "content": ""} if first else (
                    {"content": piece} if piece is not None else {})
                choice = {"index": 0, "delta": delta, "logprobs": None,
                          "finish_reason": reason, "stop_reason": None}
            else:
                choice = {"index": 0, "text": piece or "", "logprobs": None,
                          "finish_reason": reason, "stop_reason": None}
            return {"id": ident, "object": kind, "created": created, "model": model,
                    "choices": [choice]}

        try:
            if chat:
                event(chunk(None, None, first=True))
            time.sleep(prefill_s)
            for i, word in enumerate(out):
                if i:
                    time.sleep(token_s)
                piece = word if i == 0 else " " + word
                event(chunk(piece, finish if i == len(out) - 1 else None))
            if (body.get("stream_options") or {}).get("include_usage"):
                event({"id": ident, "object": kind, "created": created, "model": model,
                       "choices": [], "usage": usage})
            event(b"[DONE]")
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        self._access(200)


def advertised_ip(host: str | None) -> str:
    """The address other engines should use to reach this one (vLLM's get_ip())."""
    for name in ("VLLM_HOST_IP", "HCCL_IF_IP"):
        if os.environ.get(name):
            return os.environ[name]
    if host and host not in ("0.0.0.0", "::"):
        return host
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5,
                             check=False)
        first = out.stdout.split()
        if first:
            return first[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return "127.0.0.1"


# -- vllm serve -------------------------------------------------------------------------------

USAGE = "usage: vllm serve [model_tag] [options]"


def check_mooncake_library(connector: str) -> None:
    """``from mooncake.engine import TransferEngine`` as the connector module does: the
    dynamic loader finds ascend_transport.so only in an LD_LIBRARY_PATH directory."""
    for directory in os.environ.get("LD_LIBRARY_PATH", "").split(":"):
        if directory and (Path(directory) / MOONCAKE_LIBRARY).is_file():
            return
    module = {"MooncakeHybridConnector": "mooncake_hybrid_connector",
              "MooncakeLayerwiseConnector": "mooncake_layerwise_connector"}.get(connector, "mooncake_connector")
    with _log_lock:
        print("Traceback (most recent call last):\n"
              f'  File "/vllm-workspace/vllm-ascend/vllm_ascend/distributed/kv_transfer/kv_p2p/{module}.py", '
              "line 23, in <module>\n"
              "    from mooncake.engine import TransferEngine  # type: ignore", file=sys.stderr, flush=True)
    raise EngineError(f"{MOONCAKE_LIBRARY}: cannot open shared object file: No such file or directory",
                      "ImportError")


def write_plog() -> None:
    """The process log CANN opens at start: ~/ascend/log/debug/plog/plog-PID_TIME.log."""
    base = Path(os.environ.get("ASCEND_PROCESS_LOG_PATH") or Path.home() / "ascend" / "log")
    now = time.time()
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(now)) + f"{int(now * 1000) % 1000:03d}"
    when = time.strftime("%Y-%m-%d-%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}.000"
    try:
        plog = base / "debug" / "plog"
        plog.mkdir(parents=True, exist_ok=True)
        with (plog / f"plog-{os.getpid()}_{stamp}.log").open("a") as fh:
            fh.write(f"[INFO] ASCENDCL({os.getpid()},python):{when} [acl.cpp:130]{os.getpid()} "
                     "aclInit: start to execute aclInit (ascend-fleet lab stand-in)\n")
            fh.write(f"[INFO] RUNTIME({os.getpid()},python):{when} [runtime.cc:1510]{os.getpid()} "
                     f"devices visible: {os.environ.get('ASCEND_RT_VISIBLE_DEVICES', '')}\n")
    except OSError as exc:  # CANN goes on without its log, so does the stand-in
        log("WARNING", "platform.py:120", f"cannot write the plog under {base}: {exc}")


def serve(argv: list[str]) -> int:
    try:
        cmd = parse_serve_argv(argv, FlagSpec.load(VERSION))
    except UnknownFlagError as exc:  # argparse's own words for a flag this version lacks
        print(USAGE, file=sys.stderr)
        print(f"vllm serve: error: unrecognized arguments: {exc.option}", file=sys.stderr, flush=True)
        return 2
    except ServeFlagError as exc:
        print(USAGE, file=sys.stderr)
        print(f"vllm serve: error: {exc}", file=sys.stderr, flush=True)
        return 2
    v = cmd.values
    model = cmd.model or v.get("model")
    if not model:
        print(USAGE, file=sys.stderr)
        print("vllm serve: error: a model (path or name) is required", file=sys.stderr)
        return 2
    host, port = v.get("host"), int(v.get("port") or 8000)
    tp = int(v.get("tensor_parallel_size") or 1)
    pp = int(v.get("pipeline_parallel_size") or 1)
    dp = int(v.get("data_parallel_size") or 1)
    dp_rank = v.get("data_parallel_rank")
    names = v.get("served_model_name") or [model]
    extra = v.get("additional_config") or {}
    if isinstance(extra, str):
        extra = {}
    max_len = v.get("max_model_len")
    log("INFO", "api_server.py:1885", f"vLLM API server version {VERSION}")
    log("INFO", "utils.py:328", f"non-default args: {dict(cmd.given)}")

    # The HTTP socket is bound first, as vLLM does: the port is open (and a port clash
    # fails at once) long before the server answers; only /health tells readiness.
    try:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host or "0.0.0.0", port))
        listener.listen(128)
    except OSError as exc:
        return fail(EngineError(f"[Errno {exc.errno}] {exc.strerror}", "OSError"))

    try:
        if dp_rank is not None and not 0 <= int(dp_rank) < dp:
            raise EngineError(f"data_parallel_rank {dp_rank} must be in [0, {dp})", "ValueError")
        kv = check_kv_config(v.get("kv_transfer_config"), extra, dp, tp)
        write_plog()
        if kv:
            check_mooncake_library(kv["connector"])
        needed = tp * pp * (1 if dp_rank is not None else dp)
        devices = check_devices(needed)
        log("INFO", "platform.py:157", f"NPUs in use: {devices} (tp={tp}, pp={pp}, dp={dp}"
            + (f", dp_rank={dp_rank})" if dp_rank is not None else ")"))
        host_ip = advertised_ip(host)
        side = SideChannel(kv, int(dp_rank or 0), tp) if kv else None

        deadline = time.monotonic() + env_float("VLLM_ENGINE_READY_TIMEOUT_S", 600)
        coordinator = member = None
        if dp_rank is not None and dp > 1:
            address = v.get("data_parallel_address") or "127.0.0.1"
            rpc_port = int(v.get("data_parallel_rpc_port") or DEFAULT_DP_RPC_PORT)
            if int(dp_rank) == 0:
                coordinator = Coordinator(address, rpc_port, dp, tp)
                coordinator.join_self()
                log("INFO", "coordinator.py:60",
                    f"DP coordinator for {dp} ranks listening on {address}:{rpc_port}")
            else:
                member = Member(address, rpc_port, int(dp_rank), dp, tp, deadline)
                log("INFO", "core.py:640",
                    f"DP rank {dp_rank} registered with the coordinator at {address}:{rpc_port}")

        config, size = load_model(model, v.get("quantization"))
        if [host_ip, int(dp_rank or 0)] in switches()["crash_rank"]:  # labctl engine crash_rank
            log("ERROR", "model_runner.py:2402", f"DP rank {int(dp_rank or 0)}: device error "
                "while loading the model (lab switch crash_rank)")
            raise EngineError("ACL stream synchronize failed, error code 507035", "RuntimeError")
        if max_len in (None, "auto"):
            max_len = int(config.get("max_position_embeddings", 4096))
        log("INFO", "model_runner.py:2391",
            f"Model loading took {size / 2**30:.4f} GiB and {config.get('architectures')}")
        time.sleep(env_float("ASCEND_FLEET_LAB_INIT_SECONDS", 0))  # graph capture etc.

        if coordinator is not None:
            coordinator.loaded_self()
            log("INFO", "core.py:650", f"waiting for all {dp} data parallel ranks")
            if not coordinator.ready.wait(max(0.0, deadline - time.monotonic())):
                raise_ready_timeout()
        elif member is not None:
            member.loaded(deadline)
        if dp_rank is not None and dp > 1:
            log("INFO", "core.py:660", f"all {dp} data parallel ranks are ready")
    except EngineError as exc:
        return fail(exc)

    # As vLLM's api_server: the --api-key values, else VLLM_API_KEY from the environment;
    # then every /v1/* path needs "Authorization: Bearer <key>" (/health stays open).
    api_keys = v.get("api_key") or ([os.environ["VLLM_API_KEY"]] if os.environ.get("VLLM_API_KEY") else None)
    engine = Engine(names, model, int(max_len), api_keys, kv, side,
                    int(dp_rank or 0), tp, host_ip)
    handler = type("BoundHandler", (Handler,), {"engine": engine})
    server = Server((host or "0.0.0.0", port), handler, bind_and_activate=False)
    server.socket.close()
    server.socket = listener  # the socket bound at the start
    log("INFO", "api_server.py:1912",
        f"Starting vLLM API server {dp_rank or 0} on http://{host or '0.0.0.0'}:{port}")
    uvicorn_log(f"Started server process [{os.getpid()}]")
    uvicorn_log("Waiting for application startup.")
    uvicorn_log("Application startup complete.")

    def stop(signum, _frame) -> None:
        uvicorn_log("Shutting down")
        uvicorn_log(f"Finished server process [{os.getpid()}]")
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("--version", "-v"):
        print(VERSION)
        return 0
    if not argv or argv[0] != "serve":
        print("usage: vllm [-h] [-v] {chat,complete,serve,bench,collect-env,run-batch} ...",
              file=sys.stderr)
        if argv:
            print(f"vllm: error: argument subparser: invalid choice: {argv[0]!r} "
                  "(this lab stand-in implements only 'serve')", file=sys.stderr)
        return 2
    return serve(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
