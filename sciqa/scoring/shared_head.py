"""The head every question's prompt starts with, run once per model and reused by every batch.

A chat template and the instructions put the same tokens before each question (SmolLM2's
system prompt + "Question:" is 26 of the ~100 tokens of an ARC-Challenge letter prompt).
:class:`HeadCache` runs them once, keeps their KV cache at batch size 1, and gives each
batch its own copy repeated to the batch's size; only the rest of each prefix (its *tail*)
then runs per question (:func:`sciqa.scoring.llm_scoring.tail_inputs`).

A row is laid out ``[head | padding | tail]``: the tails are left-padded after the shared
head, so every row's last token still sits in the last column and one ``logits_to_keep=1``
slice serves the batch, as in the full path. The attention mask is ones over the head then
the tail's own mask, and position ids continue after the head and skip the padding, so
each real token attends to the same tokens at the same positions as in the full path's
``[padding | head | tail]`` and the scores agree to float tolerance.

The head is :attr:`~sciqa.scoring.llm_prompts.LLMEncoded.shared_head`: compared as token
ids, not text, so the split is exact whatever the tokenizer merges. No shared token, or a
sliding-window model whose rows would outgrow its window (the padding in the middle would
push head tokens out of it), takes the plain path.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from sciqa.scoring.llm_prompts import LLMEncoded


class HeadCache:
    """KV caches of shared heads, one per (head tokens, dtype, device), each run once.

    A run meets few heads (the prompt's, and pmi's bare answer cue), so the ``keep`` most
    recently used are kept; ``runs`` counts the forward passes over a head.
    """

    def __init__(self, keep: int = 4):
        self.keep = keep
        self.runs = 0
        self._caches: OrderedDict[tuple[Any, ...], Any] = OrderedDict()

    def usable(self, model: Any, enc: LLMEncoded, rows: Sequence[int]) -> int:
        """Tokens of ``enc``'s shared head that ``rows`` can start from (0: none)."""
        head = enc.shared_head
        window = getattr(model.config, "sliding_window", None)
        if head and window and max(len(enc.prefixes[i]) for i in rows) > window:
            return 0
        return head

    def expanded(self, model: Any, ids: Sequence[int], size: int) -> Any:
        """The head's KV cache repeated ``size`` times along the batch, a fresh copy: the
        forward it is passed to appends the batch's own keys and values to it."""
        key = (tuple(ids), model.dtype, str(model.device))
        cache = self._caches.get(key)
        if cache is None:
            head = torch.tensor([list(ids)], dtype=torch.long, device=model.device)
            cache = model(input_ids=head, use_cache=True, logits_to_keep=1).past_key_values
            self.runs += 1
            self._caches[key] = cache
            while len(self._caches) > self.keep:
                self._caches.popitem(last=False)
        self._caches.move_to_end(key)
        batch = copy.deepcopy(cache)
        batch.batch_repeat_interleave(size)
        return batch
