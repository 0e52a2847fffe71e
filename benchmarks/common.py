"""Helpers shared by the benchmark scripts: machine line, results file, MiniLM evaluation data."""

from __future__ import annotations

import json
import os
import pathlib
import platform

import numpy as np

RESULTS = pathlib.Path(__file__).parent / "results"


def machine_line() -> str:
    """One line naming the CPU, core count, jax version and backend."""
    import jax

    return (
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
        f"backend {jax.default_backend()}"
    )


def write_results(out: pathlib.Path, name: str, payload: dict) -> pathlib.Path:
    """Writes ``out/name.json`` with the machine facts added."""
    import jax

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    facts = {"machine": platform.platform(), "cpus": os.cpu_count(), "backend": jax.default_backend()}
    path.write_text(json.dumps({**facts, **payload}, indent=1))
    return path


def logistic_probe(x_train, y_train, x_test, y_test, l2: float = 1e-2, iters: int = 30) -> float:
    """Test accuracy of L2-regularised logistic regression fitted by Newton's method."""
    add = lambda x: np.concatenate([x, np.ones((len(x), 1))], 1)  # noqa: E731
    a, b = add(x_train).astype(np.float64), add(x_test).astype(np.float64)
    w = np.zeros(a.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-a @ w))
        grad = a.T @ (p - y_train) / len(a) + l2 * w
        hess = (a * (p * (1 - p))[:, None]).T @ a / len(a) + l2 * np.eye(len(w))
        w -= np.linalg.solve(hess, grad)
    return float(np.mean(((b @ w) > 0) == (y_test > 0.5)))


def review_probe_data(tokenizer, n: int = 8000, max_len: int = 128):
    """The VADER movie snippets with nonzero valence (seeded sample of ``n``): batches in
    ``index`` order and float labels (1 = positive); the first 6000 train the probe."""
    from jaxslim.data import labelled_sentences
    from jaxslim.prune import bucket_batches, tokenize

    reviews = [(t, v) for t, v in labelled_sentences() if v != 0]
    order = np.random.default_rng(0).permutation(len(reviews))[:n]
    batches = bucket_batches(tokenize(tokenizer, [reviews[i][0] for i in order], max_len))
    labels = np.array([reviews[i][1] > 0 for i in order], np.float64)
    return batches, labels


def probe_accuracy(embeddings: np.ndarray, labels: np.ndarray, n_train: int = 6000) -> float:
    """Logistic-probe test accuracy of frozen sentence embeddings (first ``n_train`` rows train)."""
    return logistic_probe(embeddings[:n_train], labels[:n_train], embeddings[n_train:], labels[n_train:])
