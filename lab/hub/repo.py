"""The stand-in model repository the lab's hub serves.

It is shaped like ``Eco-Tech/DeepSeek-V4-Flash-w8a8-mtp`` on ModelScope: a DeepSeek-V4-like
``config.json``, tokenizer files, a ``quant_model_description.json`` (what vllm-ascend's
``--quantization ascend`` reads), ``model.safetensors.index.json`` and several
``model-0000N-of-0000M.safetensors`` shards with valid safetensors headers.

Everything is generated deterministically from (model id, total size, shard count) into a
cache directory, so two runs with the same parameters produce byte-identical files and the
same sha256 sums. Nothing generated here is committed.

Stdlib only: the hub must run on any Python 3.9+.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
from pathlib import Path

MIB = 1024 * 1024
# Bump when the layout of the generated files changes, so old caches are not reused.
GENERATOR_VERSION = 2
# Files of the lab model made by lab/eval/make_lab_data.py (a real tokenizer, the answer key
# of the lab's evaluation datasets): served as they are, replacing the generated ones.
EVAL_MODEL_FILES = Path(__file__).resolve().parents[1] / "eval" / "model"
ALIGN = 4096  # shard payloads are multiples of this (tensor rows are 4096 bytes wide)


def shard_name(index: int, count: int) -> str:
    return f"model-{index:05d}-of-{count:05d}.safetensors"


def _config(model_id: str) -> dict:
    # A trimmed DeepSeek-V4-like config: enough for a tool that inspects it
    # (architectures, model_type, context length, MTP layers, quantization).
    return {
        "_name_or_path": model_id,
        "architectures": ["DeepseekV4ForCausalLM"],
        "model_type": "deepseek_v4",
        "hidden_size": 4096,
        "intermediate_size": 2048,
        "moe_intermediate_size": 2048,
        "num_hidden_layers": 43,
        "num_nextn_predict_layers": 1,
        "num_attention_heads": 64,
        "num_key_value_heads": 1,
        "n_routed_experts": 256,
        "n_shared_experts": 1,
        "num_experts_per_tok": 6,
        "vocab_size": 129280,
        "max_position_embeddings": 1048576,
        "rope_theta": 10000,
        "compress_ratios": [4, 128],
        "hc_mult": 4,
        "torch_dtype": "bfloat16",
        "bos_token_id": 0,
        "eos_token_id": 1,
        "tie_word_embeddings": False,
        "transformers_version": "4.57.1",
        "quantization_config": {"quant_method": "ascend", "weight_bits": 8, "activation_bits": 8},
    }


def _tokenizer() -> dict:
    # A tiny but well-formed tokenizers.json (word-level) so JSON parsers accept it.
    vocab = {"<｜begin▁of▁sentence｜>": 0, "<｜end▁of▁sentence｜>": 1, "<unk>": 2}
    for i, word in enumerate("I am DeepSeek V4 Flash served by the lab engine".split()):  # noqa: SIM905
        vocab[word] = 3 + i
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": 0, "content": "<｜begin▁of▁sentence｜>", "special": True},
            {"id": 1, "content": "<｜end▁of▁sentence｜>", "special": True},
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }


def _tokenizer_config() -> dict:
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<｜begin▁of▁sentence｜>",
        "eos_token": "<｜end▁of▁sentence｜>",
        "model_max_length": 1048576,
        "tokenizer_class": "LlamaTokenizerFast",
        "legacy": True,
    }


def _generation_config() -> dict:
    return {"_from_model_config": True, "bos_token_id": 0, "eos_token_id": 1,
            "do_sample": True, "temperature": 1.0, "top_p": 1.0}


def _plan_shards(total_bytes: int, shards: int) -> list[list[tuple[str, str, list[int], int]]]:
    """Split the payload into shards of tensors: [(name, dtype, shape, nbytes), ...] per shard.

    Each shard holds one int8 weight per layer it covers plus that weight's float32 scale,
    which is what a w8a8 checkpoint looks like. Sizes are multiples of ALIGN.
    """
    per_shard = max(ALIGN * 2, (total_bytes // shards) // ALIGN * ALIGN)
    plan = []
    layer = 0
    for _ in range(shards):
        rows_total = per_shard // ALIGN
        # Two layers per shard: the first takes about half the rows.
        tensors = []
        left = rows_total
        for part in range(2):
            rows = left if part == 1 else max(1, rows_total // 2)
            left -= rows
            # The scale is rows*4 bytes; keep weight + scale inside the shard budget.
            w_rows = max(1, rows - (rows * 4 + ALIGN - 1) // ALIGN)
            s_bytes = (rows - w_rows) * ALIGN
            prefix = f"model.layers.{layer}.mlp.experts"
            tensors.append((f"{prefix}.w13_weight", "I8", [w_rows, ALIGN], w_rows * ALIGN))
            tensors.append((f"{prefix}.w13_weight_scale", "F32", [s_bytes // 4], s_bytes))
            layer += 1
        plan.append(tensors)
    return plan


def _header(tensors: list[tuple[str, str, list[int], int]]) -> bytes:
    """A safetensors header: 8-byte little-endian length, then JSON padded to 8 bytes."""
    meta: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape, nbytes in tensors:
        meta[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(meta, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _write_payload(fh, seed: str, nbytes: int, digest) -> None:
    """Deterministic pseudo-random bytes, written one MiB at a time.

    One random MiB per shard is generated, and each MiB written carries its own index in
    its first 8 bytes, so no two MiB of a shard are identical (a resumed download that
    restarted at the wrong offset would not hash correctly).
    """
    block = bytearray(random.Random(seed).randbytes(MIB))
    written = 0
    index = 0
    while written < nbytes:
        block[0:8] = struct.pack("<Q", index)
        piece = bytes(block[: min(MIB, nbytes - written)])
        fh.write(piece)
        digest.update(piece)
        written += len(piece)
        index += 1


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def generate(root: Path, model_id: str, size_mb: float, shards: int = 4) -> dict:
    """Generate (or reuse) the repository; return its manifest.

    The manifest is ``{"model": id, "dir": files_dir, "files": [{"path", "size", "sha256"}]}``
    with paths relative to ``dir``; it is stored as ``manifest.json`` next to ``dir``, so it
    is never served as a repository file.
    """
    total = int(size_mb * MIB)
    # The eval files are part of the key: a changed tokenizer or answer key makes a new cache.
    eval_digest = hashlib.sha256()
    for extra in sorted(EVAL_MODEL_FILES.glob("*.json")):
        eval_digest.update(extra.name.encode() + b"\0" + extra.read_bytes() + b"\0")
    key = (f"{model_id.replace('/', '--')}-{total}b-{shards}s-v{GENERATOR_VERSION}"
           f"-e{eval_digest.hexdigest()[:12]}")
    repo_dir = Path(root) / key
    manifest_path = repo_dir / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if all((repo_dir / "files" / f["path"]).is_file() for f in manifest["files"]):
            manifest["dir"] = str(repo_dir / "files")
            return manifest

    files_dir = repo_dir / "files"
    files_dir.mkdir(parents=True, exist_ok=True)
    small = {
        "config.json": _config(model_id),
        "generation_config.json": _generation_config(),
        "tokenizer.json": _tokenizer(),
        "tokenizer_config.json": _tokenizer_config(),
    }
    plan = _plan_shards(total, shards)
    weight_map = {}
    quant_desc = {"model_quant_type": "W8A8_DYNAMIC", "version": "1.0.0"}
    total_size = 0
    for i, tensors in enumerate(plan, start=1):
        for name, _dtype, _shape, nbytes in tensors:
            weight_map[name] = shard_name(i, len(plan))
            quant_desc[name] = "W8A8_DYNAMIC" if name.endswith("weight") else "FLOAT"
            total_size += nbytes
    small["model.safetensors.index.json"] = {
        "metadata": {"total_size": total_size},
        "weight_map": weight_map,
    }
    small["quant_model_description.json"] = quant_desc

    entries = []
    for name, content in small.items():
        path = files_dir / name
        path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
        entries.append({"path": name, "size": path.stat().st_size, "sha256": _sha256_file(path)})
    for extra in sorted(EVAL_MODEL_FILES.glob("*.json")):
        path = files_dir / extra.name
        path.write_bytes(extra.read_bytes())
        entries = [e for e in entries if e["path"] != extra.name]
        entries.append({"path": extra.name, "size": path.stat().st_size,
                        "sha256": _sha256_file(path)})
    for i, tensors in enumerate(plan, start=1):
        name = shard_name(i, len(plan))
        path = files_dir / name
        digest = hashlib.sha256()
        with path.open("wb") as fh:
            header = _header(tensors)
            fh.write(header)
            digest.update(header)
            _write_payload(fh, f"{model_id}/{name}", sum(t[3] for t in tensors), digest)
        entries.append({"path": name, "size": path.stat().st_size, "sha256": digest.hexdigest()})

    manifest = {"model": model_id, "size_mb": size_mb, "shards": len(plan),
                "files": entries}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    manifest["dir"] = str(files_dir)
    return manifest
