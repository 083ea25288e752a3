"""Option-permutation test-time augmentation.

A multiple-choice model can prefer a position ("A" more often than "E"). Each TTA pass
shows the options in another order: pass ``k`` puts original option ``(j + k) mod C`` in
slot ``j`` (a cyclic rotation), the model scores the rotated question, and the logits
are mapped back to the original letters before averaging. Pass 0 is the identity.

>>> perm = rotation(4, 1)
>>> perm.tolist()
[1, 2, 3, 0]
>>> unpermute(np.array([[10.0, 20.0, 30.0, 40.0]]), perm).tolist()
[[40.0, 10.0, 20.0, 30.0]]
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from infer.errors import InferError
from sciqa.schema import ANSWER


def rotation(n_options: int, k: int) -> np.ndarray:
    """``perm[j]`` = index of the original option shown in slot ``j``."""
    return (np.arange(n_options) + k) % n_options


def rotations(n_options: int, passes: int) -> list[np.ndarray]:
    """The first ``passes`` cyclic rotations; there are only ``n_options`` distinct ones."""
    if not 1 <= passes <= n_options:
        raise InferError(
            f"--tta {passes}: with {n_options} options there are 1..{n_options} distinct "
            "rotations; use a value in that range"
        )
    return [rotation(n_options, k) for k in range(passes)]


def permute_options(frame: pd.DataFrame, letters: list[str], perm: np.ndarray) -> pd.DataFrame:
    """Questions with option ``letters[perm[j]]`` moved into column ``letters[j]``."""
    out = frame.copy()
    values = frame[letters].to_numpy()
    out[letters] = values[:, perm]
    if ANSWER in out.columns:
        inverse = {letters[p]: letters[j] for j, p in enumerate(perm)}
        out[ANSWER] = out[ANSWER].map(lambda a: inverse.get(a, a))
    return out


def unpermute(logits: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Logits of a permuted pass back in the original option order (exact)."""
    out = np.empty_like(logits)
    out[:, perm] = logits
    return out
