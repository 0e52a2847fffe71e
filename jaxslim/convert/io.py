"""Reading and writing safetensors checkpoint directories with the numpy API (no torch)."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
MAX_SHARD_BYTES = 5 * 1024**3


def read_json(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: a checkpoint directory needs it") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def _read_file(path: pathlib.Path, keys=None) -> dict[str, np.ndarray]:
    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: f.get_tensor(k) for k in (keys if keys is not None else f.keys())}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from None


def read_tensors(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of ``model.safetensors`` or of the shards listed in ``model.safetensors.index.json``."""
    d = pathlib.Path(directory)
    if (d / WEIGHTS).exists():
        return _read_file(d / WEIGHTS)
    if (d / INDEX).exists():
        weight_map = read_json(d / INDEX).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{d / INDEX} has no 'weight_map' object")
        by_file: dict[str, list[str]] = {}
        for key, fname in weight_map.items():
            by_file.setdefault(fname, []).append(key)
        out: dict[str, np.ndarray] = {}
        for fname, keys in sorted(by_file.items()):
            if not (d / fname).exists():
                raise FileNotFoundError(f"{d / fname}, listed in {INDEX}, is missing")
            out.update(_read_file(d / fname, keys))
        return out
    raise FileNotFoundError(f"{d} has neither {WEIGHTS} nor {INDEX}")


def write_tensors(
    directory: str | os.PathLike, tensors: dict[str, np.ndarray], *, max_shard_bytes: int = MAX_SHARD_BYTES
) -> list[pathlib.Path]:
    """Writes ``tensors`` as one file, or as shards of at most ``max_shard_bytes`` plus an index."""
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for key in sorted(tensors):
        nbytes = tensors[key].nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key]
        size += nbytes
    meta = {"format": "pt"}  # transformers only loads safetensors files that say so
    if len(shards) == 1:
        save_file(shards[0], str(d / WEIGHTS), metadata=meta)
        return [d / WEIGHTS]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards, strict=True):
        save_file(shard, str(d / name), metadata=meta)
        weight_map.update({k: name for k in shard})
    total = sum(t.nbytes for t in tensors.values())
    (d / INDEX).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1)
    )
    return [d / n for n in names]
