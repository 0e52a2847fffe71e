"""Reading and writing safetensors checkpoint directories with the numpy API (no torch).

A Hugging Face directory holds ``config.json`` and either ``model.safetensors`` or shards listed in
``model.safetensors.index.json``; older ones hold ``pytorch_model.bin`` (or shards listed in its
index), which is read only when torch is installed, with ``weights_only=True``. Every failure names
the file it concerns.

Example:
    >>> tensors = read_tensors("all-MiniLM-L6-v2/")  # doctest: +SKIP
    >>> tensors["embeddings.word_embeddings.weight"].shape  # doctest: +SKIP
    (30522, 384)
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from collections.abc import Iterable

# Registers bfloat16 with numpy: safetensors' numpy reader looks dtypes up by name, and bf16
# checkpoints (most Llama releases) would otherwise fail with "data type 'bfloat16' not understood".
import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from jaxslim.paths import absolute

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
SHARD_GLOB = "model-*-of-*.safetensors"
MAX_SHARD_BYTES = 5 * 1024**3
TORCH_WEIGHTS = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
# what save_pretrained writes; transformers 4.x refuses safetensors files without a known format
HF_METADATA = {"format": "pt"}


def read_json(path: pathlib.Path) -> dict:
    """The JSON object in ``path``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is not a JSON object.
    """
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: a checkpoint directory needs it") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def read_file(path: pathlib.Path, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Tensors of one safetensors file: all of them, or ``keys``.

    Raises:
        ValueError: the file is truncated or corrupt, or lacks one of ``keys``.
    """
    try:
        with safe_open(str(path), framework="numpy") as f:
            present = set(f.keys())
            wanted = sorted(present) if keys is None else list(keys)
            absent = [k for k in wanted if k not in present]
            if absent:
                raise ValueError(
                    f"{path} lacks {len(absent)} tensor(s) that {INDEX} places in it: {', '.join(absent)}"
                )
            return {k: f.get_tensor(k) for k in wanted}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing") from None
    except (SafetensorError, OSError, TypeError) as e:
        # safetensors reports a cut-off file as an invalid header or an out-of-range buffer
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from None


def read_tensors(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of ``model.safetensors``, or of the shards listed in ``model.safetensors.index.json``;
    else of ``pytorch_model.bin`` (single or sharded) when torch is installed.

    Raises:
        FileNotFoundError: neither file exists, or a listed shard is missing.
        ValueError: a file is corrupt, the index is malformed, or a tensor holds NaN or Inf.
    """
    d = absolute(directory)
    if (d / WEIGHTS).exists():
        return check_finite(read_file(d / WEIGHTS), d)
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
                raise FileNotFoundError(f"{d / fname}, listed in {d / INDEX}, is missing")
            out.update(read_file(d / fname, keys))
        return check_finite(out, d)
    hint = ""
    if any((d / n).exists() for n in (TORCH_WEIGHTS, TORCH_INDEX)):
        try:
            import torch
        except ImportError:
            # pickled torch files need torch to read
            hint = (
                f"; it has {TORCH_WEIGHTS}, which jaxslim reads only when torch is installed: install "
                "torch, or re-save it as safetensors with transformers (from_pretrained, then "
                "save_pretrained, whose default is safetensors)"
            )
        else:
            return check_finite(read_torch_tensors(d, torch), d)
    raise FileNotFoundError(f"{d} has neither {WEIGHTS} nor {INDEX}{hint}")


def read_torch_tensors(d: pathlib.Path, torch) -> dict[str, np.ndarray]:
    """All tensors of ``pytorch_model.bin``, or of the shards its index lists, as numpy arrays.

    Files are read with ``torch.load(..., weights_only=True)``: tensors and plain containers only,
    never arbitrary pickled code.

    Raises:
        FileNotFoundError: a listed shard is missing.
        ValueError: a file is corrupt or holds something other than tensors.
    """
    if (d / TORCH_WEIGHTS).exists():
        files = [d / TORCH_WEIGHTS]
    else:
        weight_map = read_json(d / TORCH_INDEX).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{d / TORCH_INDEX} has no 'weight_map' object")
        files = [d / f for f in sorted(set(weight_map.values()))]
    out: dict[str, np.ndarray] = {}
    for f in files:
        if not f.exists():
            raise FileNotFoundError(f"{f}, listed in {d / TORCH_INDEX}, is missing")
        try:
            state = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for corrupt or unsafe files
            raise ValueError(f"{f} cannot be read as a torch state dict: {e}") from None
        if not isinstance(state, dict):
            raise ValueError(f"{f} holds a {type(state).__name__}, not a state dict of tensors")
        for key, t in state.items():
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"{f}: {key} is a {type(t).__name__}, not a tensor")
            t = t.detach().contiguous()
            if t.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the bits
                out[key] = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
            else:
                out[key] = t.numpy()
    return out


GENERATION_CONFIG = "generation_config.json"
# the files a tokenizer may be saved as (fast, sentencepiece, WordPiece, BPE) plus chat templates
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)


def side_files(directory: str | os.PathLike | None) -> list[pathlib.Path]:
    """The tokenizer files and ``generation_config.json`` present in ``directory`` (none for None)."""
    if directory is None:
        return []
    d = pathlib.Path(directory)
    return [d / n for n in (*TOKENIZER_FILES, GENERATION_CONFIG) if (d / n).is_file()]


def copy_side_files(source: str | os.PathLike | None, directory: pathlib.Path) -> list[str]:
    """Copies :func:`side_files` of ``source`` into ``directory``; returns the names copied.

    A source that is ``directory`` itself copies nothing.
    """
    files = side_files(source)
    if not files or source is None or pathlib.Path(source).resolve() == directory.resolve():
        return [f.name for f in files]
    directory.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copyfile(f, directory / f.name)
    return [f.name for f in files]


def check_finite(tensors: dict[str, np.ndarray], where: object) -> dict[str, np.ndarray]:
    """``tensors``, after checking that no floating-point tensor holds a NaN or an Inf.

    Raises:
        ValueError: naming every such tensor (and its count of non-finite values) in ``where``.
    """
    bad = []
    for name, x in tensors.items():
        if np.issubdtype(x.dtype, np.floating) or x.dtype.name == "bfloat16":
            n = int(np.size(x) - np.count_nonzero(np.isfinite(x.astype(np.float32, copy=False))))
            if n:
                bad.append(f"{name} ({n} of {x.size})")
    if bad:
        shown = ", ".join(bad[:10]) + (f", ... ({len(bad) - 10} more)" if len(bad) > 10 else "")
        raise ValueError(f"{where}: {len(bad)} tensors hold NaN or Inf values: {shown}")
    return tensors


def clear_outputs(directory: pathlib.Path, names: Iterable[str], *, overwrite: bool) -> None:
    """Makes sure writing ``names`` (file names or globs) into ``directory`` loses nothing by accident.

    Without ``overwrite``, any existing match raises; with it, every match is deleted first, so
    no shard of an older, differently split checkpoint stays behind to be read later.

    Raises:
        FileExistsError: a match exists and ``overwrite`` is False.
    """
    found = sorted({p for pattern in names for p in directory.glob(pattern) if p.is_file()})
    if found and not overwrite:
        raise FileExistsError(
            f"{directory} already holds {', '.join(p.name for p in found)}; refusing to overwrite "
            "(pass overwrite=True, or --overwrite on the command line)"
        )
    for p in found:
        p.unlink()


def save_safetensors(path: pathlib.Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """``safetensors.numpy.save_file`` giving the file the permissions any other new file gets."""
    # safetensors writes a private (0600) temporary file and renames it; creating the path first
    # tells the mode a new file gets under the current umask, without touching the umask itself
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o666)
    try:
        mode = os.fstat(fd).st_mode & 0o777
    finally:
        os.close(fd)
    # safetensors copies each array's memory as it lies: a non-contiguous view (a slice taken with
    # fancy indexing on an inner axis) would be written scrambled
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=metadata)
    os.chmod(path, mode)


def write_tensors(
    directory: str | os.PathLike,
    tensors: dict[str, np.ndarray],
    *,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    metadata: dict[str, str] | None = None,
) -> list[pathlib.Path]:
    """Writes ``tensors`` as ``model.safetensors``, or as shards of at most ``max_shard_bytes`` plus
    ``model.safetensors.index.json`` (the layout ``from_pretrained`` reads).

    A single tensor larger than ``max_shard_bytes`` gets a shard of its own.

    Returns:
        The weight files written.
    """
    d = absolute(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta = HF_METADATA if metadata is None else metadata
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for key in sorted(tensors):
        nbytes = tensors[key].nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key]
        size += nbytes
    if len(shards) == 1:
        save_safetensors(d / WEIGHTS, shards[0], meta)
        return [d / WEIGHTS]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map: dict[str, str] = {}
    for name, shard in zip(names, shards, strict=True):
        save_safetensors(d / name, shard, meta)
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
    (d / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))
    return [d / n for n in names]
