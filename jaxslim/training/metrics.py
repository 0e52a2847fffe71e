"""Metric writers: JSONL always, TensorBoard through tensorboardX when installed.

Method names follow CLU's ``MetricWriter`` (``write_scalars``, ``write_texts``, ``write_hparams``,
``flush``, ``close``) so code written against CLU reads the same. Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import jax
import numpy as np

from jaxslim.paths import absolute


class MetricWriter(Protocol):
    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None: ...
    def write_texts(self, step: int, texts: Mapping[str, str]) -> None: ...
    def write_hparams(self, hparams: Mapping[str, Any]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def _scalar(v: Any) -> float | int:
    v = np.asarray(v)
    if v.size != 1:
        raise ValueError(f"metric values must be scalars, got shape {v.shape}")
    v = v.reshape(())
    return int(v) if np.issubdtype(v.dtype, np.integer) else float(v)


class JsonlWriter:
    """Appends one JSON object per ``write_scalars`` call to ``<workdir>/metrics.jsonl``.

    Non-finite floats are written as the strings ``"nan"``, ``"inf"``, ``"-inf"`` so the file stays
    valid JSON. Appending (never truncating) keeps a resumed run's history in one file.
    """

    def __init__(self, workdir: str | os.PathLike, filename: str = "metrics.jsonl"):
        self.path = absolute(workdir) / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def _write(self, record: dict) -> None:
        self._f.write(json.dumps(record) + "\n")

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        rec: dict[str, Any] = {"step": int(step), "time": time.time()}
        for k, v in scalars.items():
            x = _scalar(v)
            rec[k] = x if not (isinstance(x, float) and not math.isfinite(x)) else str(x)
        self._write(rec)

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        self._write({"step": int(step), "time": time.time(), **{k: str(v) for k, v in texts.items()}})

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        self._write({"hparams": json.loads(json.dumps(dict(hparams), default=str))})

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class TensorBoardWriter:
    """TensorBoard event files through tensorboardX (no TensorFlow needed)."""

    def __init__(self, logdir: str | os.PathLike):
        from tensorboardX import SummaryWriter

        self._w = SummaryWriter(str(absolute(logdir)))

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        for k, v in scalars.items():
            self._w.add_scalar(k, _scalar(v), int(step))

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        for k, v in texts.items():
            self._w.add_text(k, str(v), int(step))

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        self._w.add_text("hparams", "```\n" + json.dumps(dict(hparams), indent=1, default=str) + "\n```", 0)

    def flush(self) -> None:
        self._w.flush()

    def close(self) -> None:
        self._w.close()


class MultiWriter:
    """Fans out to several writers; does nothing on processes other than 0."""

    def __init__(self, writers: Sequence[MetricWriter]):
        self.writers = list(writers) if jax.process_index() == 0 else []

    def write_scalars(self, step, scalars):
        for w in self.writers:
            w.write_scalars(step, scalars)

    def write_texts(self, step, texts):
        for w in self.writers:
            w.write_texts(step, texts)

    def write_hparams(self, hparams):
        for w in self.writers:
            w.write_hparams(hparams)

    def flush(self):
        for w in self.writers:
            w.flush()

    def close(self):
        for w in self.writers:
            w.close()


def default_writers(workdir: str | os.PathLike, *, tensorboard: bool = True) -> MultiWriter:
    """JSONL in ``workdir`` and, when requested, TensorBoard events in ``workdir/tb``."""
    writers: list[MetricWriter] = [JsonlWriter(workdir)]
    if tensorboard and jax.process_index() == 0:
        writers.append(TensorBoardWriter(absolute(workdir) / "tb"))
    return MultiWriter(writers)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl file (the last record of each step wins on resume)."""
    rows = [json.loads(line) for line in absolute(path).read_text().splitlines() if line.strip()]
    return rows
