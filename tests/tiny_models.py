"""Tiny random encoders for tests: a word-level vocab file and the config sizes they share.

Real checkpoints cannot be downloaded in tests, so train and infer tests build these
(a few thousand parameters) and save them like any model directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def write_vocab(folder: Path, words: Sequence[str]) -> Path:
    """A BERT-style ``vocab.txt``: the special tokens, then one word per line."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vocab.txt"
    path.write_text("\n".join([*SPECIAL_TOKENS, *words]) + "\n", encoding="utf-8")
    return path


def tiny_sizes(words: Sequence[str], hidden: int, layers: int) -> dict[str, Any]:
    """Config keyword arguments for a tiny encoder over ``words``."""
    return {
        "vocab_size": len(words) + len(SPECIAL_TOKENS),
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "intermediate_size": 2 * hidden,
        "max_position_embeddings": 128,
    }
