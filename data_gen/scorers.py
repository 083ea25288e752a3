"""Scorers behind the answerability and too-easy filters: option probabilities per question.

``zero_shot`` (default) turns :func:`sciqa.scoring.zero_shot.option_scores` cosines into
probabilities with a temperature softmax; ``llm:NAME`` is a causal LM judge reading the
listed options (:mod:`data_gen.judge`); any other ``gen.scorer`` value is a
``sciqa train`` model directory (an ``AutoModelForMultipleChoice`` checkpoint + tokenizer)
whose logits are soft-maxed. Heavy imports stay inside functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from sciqa.assets.registry import resolve_model
from sciqa.config import CausalLMConfig, GenConfig
from sciqa.errors import SciqaError
from sciqa.metrics import softmax
from sciqa.scoring.zero_shot import option_scores
from sciqa.weights import loading_weights

ZERO_SHOT = "zero_shot"


class Scorer(Protocol):
    name: str

    def probabilities(self, frame: pd.DataFrame, *, use_context: bool) -> np.ndarray: ...


def needs_scorer(gen: GenConfig) -> bool:
    """Whether a filter asks a scorer (answerability, too easy)."""
    return gen.answerability_filter or gen.too_easy_filter


def needs_encoder(gen: GenConfig, excluding: bool) -> bool:
    """Whether gen embeds text: near-duplicates, leaks into ``excluding`` files, the
    zero-shot scorer, or the embedding science filter."""
    zero_shot = needs_scorer(gen) and gen.scorer == ZERO_SHOT
    return gen.dedup or excluding or zero_shot or gen.science_filter == "embedding"


def load_encoder(name: str) -> Any:
    """The ``models.embedding`` sentence-transformers model ``name``, on CPU unless CUDA is
    there."""
    from sentence_transformers import SentenceTransformer

    source = resolve_model(name, "embedding")
    return SentenceTransformer(source.name_or_path)


class ZeroShotScorer:
    name = ZERO_SHOT

    def __init__(self, encoder: Any, temperature: float) -> None:
        self.encoder = encoder
        self.temperature = temperature

    def probabilities(self, frame: pd.DataFrame, *, use_context: bool) -> np.ndarray:
        return softmax(
            option_scores(self.encoder, frame, use_context=use_context), self.temperature
        )


class TrainedScorer:
    """A multiple-choice checkpoint written by ``sciqa train`` (or any HF MC model dir)."""

    def __init__(self, path: str, max_length: int = 256, batch_size: int = 8) -> None:
        from transformers import AutoModelForMultipleChoice, AutoTokenizer

        if not Path(path).is_dir():
            raise SciqaError(
                f"gen.scorer = {path!r}: not a model directory; use zero_shot, llm:NAME "
                "(e.g. llm:qwen) or a `sciqa train` checkpoint folder"
            )
        self.name = path
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        with loading_weights(path):
            self.model = AutoModelForMultipleChoice.from_pretrained(path).eval()
        self.max_length = max_length
        self.batch_size = batch_size

    def probabilities(self, frame: pd.DataFrame, *, use_context: bool) -> np.ndarray:
        import torch
        from transformers import DataCollatorForMultipleChoice

        from sciqa.scoring.mc_encoding import encode_questions

        encoded = encode_questions(
            self.tokenizer,
            frame,  # with its answers: this transformers' collator requires labels
            self.max_length,
            use_context=use_context,
        )
        collate = DataCollatorForMultipleChoice(self.tokenizer)
        logits = []
        with torch.inference_mode():
            for start in range(0, len(encoded.features), self.batch_size):
                batch = collate(encoded.features[start : start + self.batch_size])
                logits.append(self.model(**batch).logits.float().numpy())
        return softmax(np.concatenate(logits)) if logits else np.zeros((0, encoded.n_options))


def check_scorer(gen: GenConfig) -> None:
    """Fail now, before any request is sent, when an ``llm:`` judge the filters need
    cannot be found (its packaged model is assembled and converted here, once)."""
    from data_gen.judge import is_llm_judge, judge_path

    if needs_scorer(gen) and is_llm_judge(gen.scorer):
        judge_path(gen.scorer)


def make_scorer(gen: GenConfig, encoder: Any, causal: CausalLMConfig | None = None) -> Scorer:
    """The scorer ``gen.scorer`` names (``zero_shot`` asks ``encoder``; an ``llm:`` judge
    prompts as the ``causal_lm`` section says)."""
    from data_gen.judge import LLMJudge, is_llm_judge

    if gen.scorer == ZERO_SHOT:
        return ZeroShotScorer(encoder, gen.scorer_temperature)
    if is_llm_judge(gen.scorer):
        return LLMJudge(gen.scorer, gen, causal or CausalLMConfig())
    return TrainedScorer(gen.scorer)
