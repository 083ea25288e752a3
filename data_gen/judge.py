"""``gen.scorer = llm:NAME``: a causal LM that reads the question as a judge (letter mode).

The prompt lists the options and the score of each is the next token's logit for its
letter, exactly as ``sciqa infer "llm:NAME?mode=letter"`` scores a question: the prompt
comes from :mod:`sciqa.scoring.llm_prompts` (the ``causal_lm`` section's letter and context
templates, in the chat template when the tokenizer has one) and the logits from
:func:`sciqa.scoring.llm_scoring.score_rows`. With ``use_context`` the passage precedes the
question (the answerability filter: the judge must pick the key); without it the
question stands alone (the too-easy filter). Probabilities are the softmax over the
letters only.

The model runs in this process, after the generation engine has stopped: a second copy
is never in memory, and the judge does not depend on what the endpoint can return (an
OpenAI model gives at most 20 top logprobs, and no score for a letter outside them).
Heavy imports stay inside functions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sciqa.assets.llm import LLM_PREFIX
from sciqa.config import CausalLMConfig, GenConfig
from sciqa.errors import SciqaError
from sciqa.metrics import softmax
from sciqa.schema import option_letters

if TYPE_CHECKING:
    from data_gen.cache import ReplyCache

log = logging.getLogger(__name__)


def is_llm_judge(scorer: str) -> bool:
    """Whether ``gen.scorer`` names a causal LM judge (``llm:NAME``)."""
    return scorer.startswith(LLM_PREFIX)


def judge_dtype(name: str) -> Any:
    """The torch dtype of ``gen.scorer_dtype``: ``auto`` is bf16 where the hardware
    computes in it (a CUDA GPU with bf16, a CPU with avx512_bf16/amx_bf16), else fp32."""
    import torch

    if name == "bf16":
        return torch.bfloat16
    if name == "fp32":
        return torch.float32
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    from sciqa.assets.convert import cpu_has_bf16

    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def judge_spec(causal: CausalLMConfig, tokenizer: Any, name: str, max_length: int) -> Any:
    """The judge's :class:`~sciqa.scoring.llm_prompts.PromptSpec`: ``causal_lm``'s letter
    prompt, the passage included (each call chooses whether to fill it)."""
    from sciqa.scoring.llm_prompts import PromptSpec

    letter = causal.model_copy(
        update={"mode": "letter", "max_length": max_length, "use_context": True}
    )
    return PromptSpec.from_config(letter, tokenizer, name)


class LLMJudge:
    """Option probabilities from a causal LM reading the listed options (a ``Scorer``)."""

    def __init__(
        self,
        name: str,
        gen: GenConfig,
        causal: CausalLMConfig,
        *,
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        """Load ``name`` (``llm:qwen``, ``llm:/a/folder``, ...) unless ``model`` and
        ``tokenizer`` are given."""
        self.name = name
        self.batch_size = gen.scorer_batch_size
        if model is None or tokenizer is None:
            model, tokenizer = _load(name, gen.scorer_dtype)
        self.model, self.tokenizer = model, tokenizer
        try:
            self.spec = judge_spec(causal, tokenizer, name, gen.scorer_max_length)
        except SciqaError as exc:
            raise SciqaError(f"gen.scorer = {name}: {exc}") from None
        self.seconds = 0.0  # spent scoring, for the manifest and benchmarks/judge.py
        self.questions = 0  # prompts scored now (with and without passage: 2), not cached
        self.cache: ReplyCache | None = None  # verdicts kept across runs (sciqa gen sets it)

    def prompts(self, frame: pd.DataFrame, *, use_context: bool) -> Any:
        """The encoded prompts (:class:`~sciqa.scoring.llm_prompts.LLMEncoded`) of ``frame``."""
        from sciqa.scoring.llm_prompts import encode_for_llm

        spec = replace(self.spec, use_context=use_context)
        letters = option_letters(frame.columns)
        try:
            return encode_for_llm(self.tokenizer, frame, spec, letters=letters, name=self.name)
        except SciqaError as exc:
            raise SciqaError(f"gen.scorer = {self.name}: {exc}") from None

    def probabilities(self, frame: pd.DataFrame, *, use_context: bool) -> np.ndarray:
        if frame.empty:
            return np.zeros((0, len(option_letters(frame.columns))))
        began = time.perf_counter()
        enc = self.prompts(frame, use_context=use_context)
        if enc.truncated:
            log.info("%s: passage cut to fit for %d question(s)", self.name, enc.truncated)
        keys = self.prompt_keys(enc)
        known = self.cache.judged(keys) if self.cache is not None else {}
        logits = np.zeros((len(enc), enc.n_options), dtype=np.float32)
        todo = []
        for row, key in enumerate(keys):
            if key in known and len(known[key]) == enc.n_options:
                logits[row] = known[key]
            else:
                todo.append(row)
        if known:
            log.info(
                "%s: %d of %d verdicts from the cache", self.name, len(keys) - len(todo), len(keys)
            )
        what = "with passage" if use_context else "without passage"
        logits[todo] = self.letter_logits(enc, todo, keys=keys, desc=f"judge {what}")
        self.seconds += time.perf_counter() - began
        self.questions += len(todo)
        return softmax(logits)

    def prompt_keys(self, enc: Any) -> list[str]:
        """One cache key per prompt: the model, its dtype and the prompt's token ids (the
        template, the passage and the options are all in them)."""
        model = f"{getattr(self.model, 'name_or_path', '') or self.name}|{self.model.dtype}"
        keys = []
        for prefix in enc.prefixes:
            digest = hashlib.sha256(model.encode())
            digest.update(json.dumps([prefix, enc.answer_ids]).encode())
            keys.append(digest.hexdigest())
        return keys

    def letter_logits(
        self,
        enc: Any,
        rows: list[int] | None = None,
        *,
        keys: list[str] | None = None,
        desc: str = "judge",
    ) -> np.ndarray:
        """``(len(rows), letters)`` logits (all rows by default), longest prompts first in
        batches (less padding); each batch is stored in the cache as it is scored."""
        from sciqa.progress import progress as progress_bar
        from sciqa.scoring.llm_scoring import ScoreHead

        rows = list(range(len(enc))) if rows is None else rows
        head = ScoreHead.of(enc)
        at = {row: i for i, row in enumerate(rows)}
        order = sorted(rows, key=lambda i: -enc.lengths[i])
        logits = np.zeros((len(rows), enc.n_options), dtype=np.float32)
        with progress_bar(len(rows), desc) as progress:
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                scores = self._scores(enc, batch, head)
                logits[[at[r] for r in batch]] = scores
                if self.cache is not None and keys is not None:
                    self.cache.put_judged(
                        {keys[r]: s.tolist() for r, s in zip(batch, scores, strict=True)}
                    )
                progress.update(len(batch))
        return logits

    def _scores(self, enc: Any, rows: list[int], head: Any) -> np.ndarray:
        import torch

        from sciqa.scoring.llm_scoring import score_rows

        pad = self.tokenizer.pad_token_id
        scores = score_rows(self.model, enc, rows, head, pad, prefix_cache=True)
        if not torch.isfinite(scores).all() and self.model.dtype != torch.float32:
            # As infer does: a half-precision overflow is redone, and the rest run, in fp32.
            log.warning("%s: non-finite scores in %s; judging in fp32", self.name, self.model.dtype)
            self.model = self.model.float()
            scores = score_rows(self.model, enc, rows, head, pad, prefix_cache=True)
        return scores.numpy()


def judge_path(name: str) -> str:
    """The folder (or Hub name) the judge ``llm:NAME`` loads: a packaged GGUF is assembled
    and converted once here, so ``sciqa gen`` calls this before it asks for anything and a
    missing package fails before a request is paid for."""
    from sciqa.assets.llm import causal_lm_path

    try:
        path = causal_lm_path(name)
    except SciqaError as exc:
        raise SciqaError(f"gen.scorer = {name}: {exc}; or set gen.scorer=zero_shot") from None
    assert path is not None  # an llm: name always resolves or raises
    return path


def _load(name: str, dtype_name: str) -> tuple[Any, Any]:
    """The judge's model (eval mode, on CUDA when there is one) and its tokenizer."""
    import torch

    from sciqa.assets.llm import load_causal_lm, load_causal_tokenizer

    path = judge_path(name)
    try:
        tokenizer = load_causal_tokenizer(path)
        model = load_causal_lm(path, dtype=judge_dtype(dtype_name))
    except SciqaError as exc:
        raise SciqaError(f"gen.scorer = {name}: {exc}") from None
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model.eval(), tokenizer
