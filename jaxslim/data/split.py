"""A deterministic train / validation split by document, so validation text is never trained on.

Documents are visited in an order drawn from ``split_seed`` and moved to validation until they hold
``val_fraction`` of the characters. Whole documents keep the held-out text unseen in every sense
(a held-out play is a play the model never read). Two cases cannot be served by whole documents:
a corpus of one document, and a selection that would leave nothing to train on; there the last
document taken is cut at a line break so both sides keep text.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _cut(doc: str, keep: int) -> tuple[str, str]:
    """Splits ``doc`` near ``keep`` characters from its start, after a line break when possible."""
    keep = min(max(keep, 1), len(doc) - 1)
    nl = doc.rfind("\n", 0, keep)
    # Prefer a line break, but not one so early that the fraction is badly off.
    at = nl + 1 if nl >= keep // 2 else keep
    return doc[:at], doc[at:]


def split_documents(
    documents: Sequence[str], val_fraction: float, *, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Splits documents into training and validation sets by a seeded draw.

    Args:
        documents: the corpus, in its fixed order.
        val_fraction: target share of characters held out, in (0, 1).
        seed: seed of the draw; the same documents and seed always give the same split.

    Returns:
        ``(train, val)``: lists of documents, each non-empty, in corpus order; together they hold
        exactly the input text, and no text is in both.

    Raises:
        ValueError: ``val_fraction`` outside (0, 1), or text too short to split.

    Example:
        >>> train, val = split_documents(["aa", "bb", "cc", "dd"], 0.25, seed=0)
        >>> len(train), len(val)
        (3, 1)
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    docs = list(documents)
    total = sum(len(d) for d in docs)
    if total < 2:
        raise ValueError(f"cannot split {total} characters of text into training and validation")
    target = val_fraction * total
    order = np.random.default_rng([seed, 0x5B117]).permutation(len(docs))
    val_ids: list[int] = []
    cut: tuple[int, str, str] | None = None
    held = 0
    for i in order:
        if held >= target:
            break
        if len(val_ids) == len(docs) - 1 or len(docs) == 1:
            # Taking this whole document would leave no training text: cut it instead.
            head, tail = _cut(docs[i], round(target - held))
            cut = (int(i), tail, head)
            break
        val_ids.append(int(i))
        held += len(docs[i])
    chosen = set(val_ids)
    train, val = [], []
    for i, doc in enumerate(docs):
        if cut is not None and i == cut[0]:
            train.append(cut[1])
            val.append(cut[2])
        elif i in chosen:
            val.append(doc)
        else:
            train.append(doc)
    # A one-character document cut in two leaves an empty side; drop it rather than emit "".
    train, val = [d for d in train if d], [d for d in val if d]
    if not train or not val:
        raise ValueError(f"cannot split {total} characters of text into training and validation")
    return train, val
