"""Option scores from a causal LM, with or without reusing the prefix's KV cache.

Two paths compute the same ``(questions, options)`` scores from :mod:`sciqa.scoring.llm_prompts`
encodings:

- :func:`full_scores`: every option's whole sequence (prefix + suffix), left-padded into
  one batch. Differentiable, so ``train`` uses it; ``infer`` uses it when
  ``causal_lm.prefix_cache`` is off.
- :func:`cached_scores`: the prefixes run once, their KV cache is repeated for each option
  and only the suffixes run on top of it: a long context is paid once, not once per option.
  Given a :class:`~sciqa.scoring.shared_head.HeadCache`, the head all prefixes share
  (system prompt, instructions) runs once per model and only each prefix's tail per batch.

Left padding keeps every sequence's last token at the same column, so one
``logits_to_keep`` slice serves the whole batch and the vocabulary-sized logits are only
materialised where they are read. Position ids come from the attention mask, so padding
never shifts a real token's position and both paths agree to float tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from sciqa.scoring.llm_prompts import LLMEncoded

if TYPE_CHECKING:
    from sciqa.scoring.shared_head import HeadCache


@dataclass(frozen=True)
class ScoreHead:
    """What turns the model's logits into one score per option."""

    mode: str
    answer_ids: tuple[int, ...] = ()
    yes_ids: tuple[int, ...] = ()
    no_ids: tuple[int, ...] = ()

    @classmethod
    def of(cls, enc: LLMEncoded) -> ScoreHead:
        return cls(enc.mode, tuple(enc.answer_ids), tuple(enc.yes_ids), tuple(enc.no_ids))

    def from_last(self, last: torch.Tensor) -> torch.Tensor:
        """Scores from the logits after a sequence's last token: ``(N, V) -> (N,)`` for
        yes_no, ``(N, V) -> (N, letters)`` for letter."""
        last = last.float()
        if self.mode == "letter":
            return last[:, list(self.answer_ids)]
        yes = torch.logsumexp(last[:, list(self.yes_ids)], dim=-1)
        return yes - torch.logsumexp(last[:, list(self.no_ids)], dim=-1)


def full_features(enc: LLMEncoded, rows: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """One feature per question: the sequence per option (one shared sequence in letter
    mode), how many trailing tokens are scored (cloze) and the divisor, plus the label."""
    if enc.uncond_suffixes:
        from sciqa.scoring.llm_prompts import LLMPromptError

        raise LLMPromptError(
            "causal_lm.normalise = 'pmi' scores zero-shot only (its second, unconditional "
            "pass is not trained); train with normalise=mean, sum or chars"
        )
    rows = range(len(enc)) if rows is None else rows
    features = []
    for i in rows:
        prefix = enc.prefixes[i]
        if enc.mode == "letter":
            feature = {"input_ids": [prefix], "score_len": [0], "norm": [1.0]}
        else:
            feature = {
                "input_ids": [prefix + s for s in enc.suffixes[i]],
                "score_len": [len(s) if enc.mode == "cloze" else 0 for s in enc.suffixes[i]],
                "norm": list(enc.norms[i]),
            }
        if enc.labels is not None:
            feature["labels"] = enc.labels[i]
        features.append(feature)
    return features


def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding.

    >>> positions(torch.tensor([[0, 1, 1], [1, 1, 1]])).tolist()
    [[0, 0, 1], [0, 1, 2]]
    """
    return (mask.cumsum(-1) - 1).clamp(min=0)


def collate_full(features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded ``(B, C, L)`` tensors of :func:`full_features` (the train collator)."""
    n_options = len(features[0]["input_ids"])
    seqs = [seq for f in features for seq in f["input_ids"]]
    ids, mask = _left_pad(seqs, pad_id)
    batch = {
        "input_ids": ids.view(len(features), n_options, -1),
        "attention_mask": mask.view(len(features), n_options, -1),
        "score_len": torch.tensor([f["score_len"] for f in features], dtype=torch.long),
        "norm": torch.tensor([f["norm"] for f in features], dtype=torch.float32),
    }
    if "labels" in features[0]:
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
    return batch


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def full_inputs(batch: dict[str, torch.Tensor], head: ScoreHead) -> tuple[dict, int]:
    """Model inputs of :func:`collate_full` rows flattened to ``(B * C, L)``, and how many
    trailing positions' logits the scores read."""
    b, c, length = batch["input_ids"].shape
    mask = batch["attention_mask"].reshape(b * c, length)
    inputs = {
        "input_ids": batch["input_ids"].reshape(b * c, length),
        "attention_mask": mask,
        "position_ids": positions(mask),
    }
    keep = int(batch["score_len"].max()) + 1 if head.mode == "cloze" else 1
    return inputs, keep


def full_from_logits(
    logits: torch.Tensor, batch: dict[str, torch.Tensor], head: ScoreHead
) -> torch.Tensor:
    """``(B, C)`` scores from the last ``keep`` positions' logits of :func:`full_inputs`."""
    b, c, length = batch["input_ids"].shape
    if head.mode != "cloze":
        scores = head.from_last(logits[:, -1])
        return scores if head.mode == "letter" else scores.view(b, c)
    ids = batch["input_ids"].reshape(b * c, length)
    score_len = batch["score_len"].reshape(-1).to(ids.device)
    k = logits.shape[1] - 1
    logp = _token_logprobs(logits[:, :-1], ids[:, length - k :])  # (N, k)
    scored = torch.arange(k, device=ids.device)[None, :] >= (k - score_len)[:, None]
    total = (logp * scored).sum(-1).view(b, c)
    return total / batch["norm"].to(total.device)


def full_scores(model: Any, batch: dict[str, torch.Tensor], head: ScoreHead) -> torch.Tensor:
    """``(B, C)`` option scores from whole sequences (keeps the autograd graph)."""
    inputs, keep = full_inputs(batch, head)
    out = model(**inputs, logits_to_keep=keep, use_cache=False)
    return full_from_logits(out.logits, batch, head)


def prefix_inputs(
    enc: LLMEncoded, rows: Sequence[int], pad_id: int, device: Any
) -> dict[str, torch.Tensor]:
    """The left-padded prefixes of ``rows``, as model inputs on ``device``."""
    ids, mask = _left_pad([enc.prefixes[i] for i in rows], pad_id)
    ids, mask = ids.to(device), mask.to(device)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions(mask)}


def tail_inputs(
    enc: LLMEncoded, rows: Sequence[int], head: int, pad_id: int, device: Any
) -> dict[str, torch.Tensor]:
    """The prefixes of ``rows`` after their shared ``head`` tokens, left-padded, as inputs
    on top of the head's KV cache: the mask covers head + tail, positions follow the head."""
    ids, mask = _left_pad([enc.prefixes[i][head:] for i in rows], pad_id)
    ids, mask = ids.to(device), mask.to(device)
    ones = torch.ones((len(rows), head), dtype=mask.dtype, device=device)
    return {
        "input_ids": ids,
        "attention_mask": torch.cat([ones, mask], -1),
        "position_ids": head + positions(mask),
    }


def suffix_inputs(
    enc: LLMEncoded, rows: Sequence[int], prefix_mask: torch.Tensor, pad_id: int
) -> dict[str, torch.Tensor]:
    """Every option's suffix of ``rows``, right-padded (padding after real tokens is
    inert), as inputs on top of the prefixes' KV cache repeated once per option; plus
    ``lengths``, each suffix's real token count."""
    device = prefix_mask.device
    c = enc.n_options
    suffixes = [s for i in rows for s in enc.suffixes[i]]
    lengths = torch.tensor([len(s) for s in suffixes], device=device)
    width = max(int(lengths.max()), 1)
    suf = torch.full((len(suffixes), width), pad_id, dtype=torch.long)
    for row, seq in enumerate(suffixes):
        suf[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    suf_mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).long()
    prefix_len = prefix_mask.sum(-1).repeat_interleave(c)
    return {
        "input_ids": suf.to(device),
        "attention_mask": torch.cat([prefix_mask.repeat_interleave(c, dim=0), suf_mask], -1),
        "position_ids": prefix_len[:, None] + torch.arange(width, device=device)[None, :],
        "lengths": lengths,
    }


def suffix_from_logits(
    enc: LLMEncoded,
    rows: Sequence[int],
    head: ScoreHead,
    last: torch.Tensor,
    logits: torch.Tensor,
    suffix: dict[str, torch.Tensor],
) -> torch.Tensor:
    """``(len(rows), C)`` scores from the prefixes' last logits and the suffixes' logits."""
    c, lengths, suf = enc.n_options, suffix["lengths"], suffix["input_ids"]
    if head.mode == "yes_no":
        at_end = logits[torch.arange(len(lengths), device=logits.device), lengths - 1]
        return head.from_last(at_end).view(len(rows), c)
    # Suffix token j is predicted by the prefix's last logits (j = 0) or suffix token j - 1.
    predictors = torch.cat([last.repeat_interleave(c, dim=0)[:, None], logits[:, :-1]], 1)
    suf_mask = torch.arange(suf.shape[1], device=suf.device)[None, :] < lengths[:, None]
    logp = _token_logprobs(predictors, suf) * suf_mask
    norms = torch.tensor([enc.norms[i] for i in rows], dtype=torch.float32, device=suf.device)
    return logp.sum(-1).view(len(rows), c) / norms


def cached_scores(
    model: Any,
    enc: LLMEncoded,
    rows: Sequence[int],
    head: ScoreHead,
    pad_id: int,
    heads: HeadCache | None = None,
) -> torch.Tensor:
    """``(len(rows), C)`` option scores; each prefix runs once, its KV cache per option
    (and with ``heads``, the shared head once per model)."""
    shared = heads.usable(model, enc, rows) if heads is not None else 0
    if heads is not None and shared:
        first = tail_inputs(enc, rows, shared, pad_id, model.device)
        past = heads.expanded(model, enc.prefixes[rows[0]][:shared], len(rows))
        out = model(**first, past_key_values=past, use_cache=True, logits_to_keep=1)
    else:
        first = prefix_inputs(enc, rows, pad_id, model.device)
        out = model(**first, use_cache=True, logits_to_keep=1)
    last = out.logits[:, -1]
    if head.mode == "letter":
        return head.from_last(last)
    cache = out.past_key_values
    cache.batch_repeat_interleave(enc.n_options)
    suffix = suffix_inputs(enc, rows, first["attention_mask"], pad_id)
    inputs = {k: v for k, v in suffix.items() if k != "lengths"}
    out2 = model(**inputs, past_key_values=cache, use_cache=True)
    return suffix_from_logits(enc, rows, head, last, out2.logits, suffix)


def score_rows(
    model: Any,
    enc: LLMEncoded,
    rows: Sequence[int],
    head: ScoreHead,
    pad_id: int,
    *,
    prefix_cache: bool = True,
    heads: HeadCache | None = None,
) -> torch.Tensor:
    """``(len(rows), C)`` float32 scores on CPU, by the cached or the full path; ``heads``
    (cached path only) runs the prompt head shared by every question once per model."""
    if enc.uncond_suffixes:  # pmi: minus each option's log-prob after the bare cue
        if not prefix_cache:
            raise ValueError("pmi scoring runs through the prefix cache")
        cond = score_rows(model, _summed(enc), rows, head, pad_id, heads=heads)
        bare = score_rows(model, _bare(enc), rows, head, pad_id, heads=heads)
        return cond - bare
    with torch.inference_mode():
        if prefix_cache:
            scores = cached_scores(model, enc, rows, head, pad_id, heads)
        else:
            batch = collate_full(full_features(enc, rows), pad_id)
            batch = {k: v.to(model.device) for k, v in batch.items() if k != "labels"}
            scores = full_scores(model, batch, head)
    return scores.float().cpu()


def _summed(enc: LLMEncoded) -> LLMEncoded:
    """The conditional half of pmi: summed log-probs (divisor 1)."""
    ones = [[1.0] * enc.n_options for _ in enc.prefixes]
    return replace(enc, norms=ones, uncond_prefix=[], uncond_suffixes=[])


def _bare(enc: LLMEncoded) -> LLMEncoded:
    """The unconditional half of pmi: every option after the bare answer cue."""
    prefixes = [enc.uncond_prefix] * len(enc.prefixes)
    return replace(_summed(enc), prefixes=prefixes, suffixes=enc.uncond_suffixes)
