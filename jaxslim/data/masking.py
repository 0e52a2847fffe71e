"""BERT's masked-LM corruption: select 15% of tokens; of those 80% become the mask token, 10% a
random token, 10% stay; the labels hold the original ids there and -100 everywhere else.

Each row draws from its own generator seeded by an integer key (the run seed and the row's global
position in the stream of batches), so a row is masked the same way whatever the batch size, the
number of hosts, or an interruption and resume; and the same text seen in another epoch gets a
fresh mask (dynamic masking, as in RoBERTa). Special tokens (separators, padding) are never
selected and never drawn as random replacements.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IGNORE_INDEX = -100  # the label of positions that carry no loss, as in jaxslim.engine.losses


class MlmMasker:
    """Applies BERT masking to rows of token ids, deterministically per row key.

    Args:
        mask_id: id of the mask token.
        vocab_size: number of ids; random replacements are drawn from the non-special ones.
        special_ids: ids never selected nor drawn.
        probability: share of non-special tokens selected.
        mask_share: share of selected tokens replaced by ``mask_id`` (BERT: 0.8).
        random_share: share replaced by a random token (BERT: 0.1); the rest stay as they are.

    Example:
        >>> masker = MlmMasker(mask_id=2, vocab_size=50, special_ids=[0, 1, 2])
        >>> rows = np.full((2, 64), 7, np.int32)
        >>> inputs, labels = masker(rows, keys=[(0, 1, 5), (0, 1, 6)])
        >>> bool(((labels == -100) | (labels == 7)).all())
        True
    """

    def __init__(
        self,
        *,
        mask_id: int,
        vocab_size: int,
        special_ids: Sequence[int] | np.ndarray = (),
        probability: float = 0.15,
        mask_share: float = 0.8,
        random_share: float = 0.1,
    ):
        if not 0 < probability < 1:
            raise ValueError(f"probability must be in (0, 1), got {probability!r}")
        if not (0 <= mask_share and 0 <= random_share and mask_share + random_share <= 1):
            raise ValueError(
                f"mask_share and random_share must be >= 0 with a sum <= 1, got {mask_share}, {random_share}"
            )
        self.mask_id = int(mask_id)
        self.vocab_size = int(vocab_size)
        self.special = np.zeros(self.vocab_size, bool)
        self.special[np.asarray(special_ids, np.int64)] = True
        self.special[self.mask_id] = True
        self.replacements = np.flatnonzero(~self.special).astype(np.int32)
        if self.replacements.size == 0:
            raise ValueError("every id is special: nothing left to draw random replacements from")
        self.probability = float(probability)
        self.mask_share = float(mask_share)
        self.random_share = float(random_share)

    def __call__(self, tokens: np.ndarray, keys: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Masks ``tokens`` ``[rows, length]``; row ``i`` draws from a generator seeded by ``keys[i]``.

        Returns:
            ``(inputs, labels)``, both int32 ``[rows, length]``; labels are ``IGNORE_INDEX`` where
            the token was not selected.
        """
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or len(keys) != tokens.shape[0]:
            raise ValueError(f"need one key per row of a 2-D batch, got {len(keys)} keys for {tokens.shape}")
        inputs = tokens.astype(np.int32, copy=True)
        labels = np.full(tokens.shape, IGNORE_INDEX, np.int32)
        for i, key in enumerate(keys):
            rng = np.random.default_rng([int(k) for k in key])
            row = inputs[i]
            # Draw every random number for the row up front, so what a position gets never
            # depends on the outcome at another position.
            select = rng.random(row.shape) < self.probability
            action = rng.random(row.shape)
            random_ids = self.replacements[rng.integers(0, self.replacements.size, row.shape)]
            select &= ~self.special[row]
            labels[i][select] = row[select]
            to_mask = select & (action < self.mask_share)
            to_random = select & (action >= self.mask_share) & (action < self.mask_share + self.random_share)
            row[to_random] = random_ids[to_random]
            row[to_mask] = self.mask_id
        return inputs, labels
