"""Each member's questions, encoded once per tokenizer, encoding and TTA rotation.

Folds of one run share a tokenizer (found by a hash of its files, loaded once) and, when
their encoding keys are equal, their encodings. The planner's token counts come from
here too: exact for a member already encoded, else estimated from the last encoding.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from infer.models import ModelSpec
from infer.plan.tta import permute_options
from infer.predictors.base import Encoded, padded_tokens
from infer.predictors.families import family_of
from infer.predictors.sharded import busiest_tokens
from infer.questions import Questions
from sciqa.config import CausalLMConfig

log = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spm.model",
    "sentencepiece.bpe.model",
)


def tokenizer_fingerprint(path: Path) -> str:
    """Hash of the tokenizer files: folds of one run share it, so tokenize once.

    A Hub-named model has no local files to hash; its name tells tokenizers apart.
    """
    digest = hashlib.sha256()
    found = False
    for name in TOKENIZER_FILES:
        file = path / name
        if file.is_file():
            found = True
            digest.update(name.encode())
            digest.update(file.read_bytes())
    if not found:
        digest.update(str(path).encode())
    return digest.hexdigest()


class Encodings:
    """The run's tokenizers and encoded questions, made on first use.

    ``perms[k]`` is TTA pass ``k``'s option order; ``batch_size`` (``infer.batch_size``)
    cuts the batches the token counts are estimated on; ``causal`` is the ``causal_lm``
    section an ``llm:NAME`` member's prompt is made from.
    """

    def __init__(
        self,
        questions: Questions,
        perms: list[np.ndarray],
        batch_size: int,
        causal: CausalLMConfig,
    ):
        self.questions, self.perms = questions, perms
        self.batch_size, self.causal = batch_size, causal
        self._fingerprints: dict[str, str] = {}  # member name -> tokenizer fingerprint
        self._tokenizers: dict[str, Any] = {}  # fingerprint -> tokenizer
        self._encoded: dict[tuple, Encoded] = {}  # (fingerprint, encoding key, pass) -> inputs
        self._tokens_per_question: float | None = None  # of the last encoding made

    def _key(self, spec: ModelSpec, k: int) -> tuple:
        return (self._fingerprint(spec), family_of(spec).encoding_key(spec), k)

    def _fingerprint(self, spec: ModelSpec) -> str:
        if spec.name not in self._fingerprints:
            self._fingerprints[spec.name] = tokenizer_fingerprint(spec.path)
        return self._fingerprints[spec.name]

    def prepare(self, spec: ModelSpec) -> Any:
        """Make ``spec`` ready to encode and return its tokenizer. Pass 0 is encoded now:
        a prompt the tokenizer cannot express fails before the model loads."""
        fingerprint = self._fingerprint(spec)
        if fingerprint not in self._tokenizers:
            self._tokenizers[fingerprint] = family_of(spec).load_tokenizer(spec)
        tokenizer = self._tokenizers[fingerprint]
        family_of(spec).prepare(spec, tokenizer, self.causal)
        self.encoded(spec, 0)
        return tokenizer

    def encoded(self, spec: ModelSpec, k: int) -> Encoded:
        """Pass ``k``'s questions as ``spec`` reads them (after :meth:`prepare`)."""
        key = self._key(spec, k)
        if key not in self._encoded:
            questions = self.questions
            frame = permute_options(questions.frame, questions.letters, self.perms[k])
            tokenizer = self._tokenizers[key[0]]
            enc = family_of(spec).encode(spec, tokenizer, frame, questions.letters)
            self._encoded[key] = enc
            if enc.overlong:
                log.warning(
                    "%s: %d questions too long even without context", spec.name, enc.overlong
                )
            total = padded_tokens(enc.lengths, len(questions.letters), self.batch_size)
            self._tokens_per_question = total / len(questions.ids)
        return self._encoded[key]

    def context_cut(self, spec: ModelSpec) -> int:
        """Questions whose context was cut to fit (causal LMs), once ``spec`` is encoded."""
        enc = self._encoded.get(self._key(spec, 0))
        return enc.truncated if enc is not None else 0

    def tokens(self, spec: ModelSpec, n_rows: int, rows: np.ndarray | None, n_devices: int) -> int:
        """Padded tokens of one pass over ``n_rows`` questions (``rows`` once the cascade
        has chosen them) on the busiest of ``n_devices`` (devices run in parallel): exact
        once this tokenizer has encoded the questions."""
        c, n = len(self.questions.letters), len(self.questions.ids)
        enc = self._encoded.get(self._key(spec, 0))
        if enc is not None:
            if rows is None and n_rows != n:  # cascade rows not chosen yet
                all_rows = busiest_tokens(enc.lengths, c, self.batch_size, None, n_devices)
                return int(all_rows * n_rows / n)
            return busiest_tokens(enc.lengths, c, self.batch_size, rows, n_devices)
        per_question = self._tokens_per_question or spec.max_length * c
        return int(per_question * math.ceil(n_rows / n_devices))
