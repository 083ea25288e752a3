"""The inference loop: models one at a time, within the budget, outputs after each.

Order: the cascade's cheap models first (they score every question), then the others by
weight, highest first, so a budget cut drops the least important work. After every
finished model the ensemble logits and ``submission.csv`` are rewritten atomically, so
killing the process at any moment leaves a complete, valid submission of the models
finished so far. Each pass's logits are cached under a key of questions + model + pass
+ rows, so a re-run skips what is already done.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from infer import outputs
from infer.ensemble.combine import combine, tta_mean
from infer.errors import BudgetError, InferError
from infer.models import ModelSpec
from infer.plan.budget import Budget, Candidate, CostModel, make_plan
from infer.plan.cascade import escalate, split_models
from infer.plan.tta import permute_options, unpermute
from infer.predictors.base import BatchTiming, Interrupted, padded_tokens
from infer.predictors.devices import resolve_devices, resolve_dtype
from infer.predictors.encoder import EncoderPredictor, load_model, load_tokenizer
from infer.predictors.sharded import ShardedPredictor, busiest_tokens
from sciqa.config import CausalLMConfig, InferConfig
from sciqa.runs import ENSEMBLE
from sciqa.scoring.mc_encoding import EncodedQuestions, encode_questions

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


class Runner:
    def __init__(
        self,
        frame: pd.DataFrame,
        letters: list[str],
        specs: list[ModelSpec],
        cfg: InferConfig,
        out_dir: Path,
        budget: Budget,
        perms: list[np.ndarray],
        qhash: str,
        on_progress: Callable[[Runner], None],
        clock: Callable[[], float],
        causal: CausalLMConfig | None = None,
    ):
        self.frame, self.letters, self.specs, self.cfg = frame, letters, specs, cfg
        self.causal = causal or CausalLMConfig()
        self.out_dir, self.budget, self.perms, self.qhash = out_dir, budget, perms, qhash
        self.on_progress, self.clock = on_progress, clock
        self.ids = frame["id"].astype(str).tolist()
        self.devices = resolve_devices(cfg.device, cfg.devices)
        self.device = self.devices[0]
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        self.costs = CostModel()
        self.logits: dict[str, np.ndarray] = {}
        self.runs: dict[str, dict[str, Any]] = {}  # per model: passes, seconds, status
        self.plans: list[dict[str, Any]] = []
        self.cascade: dict[str, Any] | None = None
        self.written = False
        self._tokenizers: dict[str, Any] = {}
        self._encodings: dict[tuple, EncodedQuestions] = {}
        self._tokens_per_question: float | None = None
        self._fingerprints: dict[str, str] = {}
        self._rows: np.ndarray | None = None  # the cascade's escalated questions
        self._overran = False

    # --- planning ---------------------------------------------------------------

    def _tokens(self, spec: ModelSpec, n_rows: int, rows: np.ndarray | None = None) -> int:
        """Padded tokens of one pass on its busiest device (devices run in parallel):
        exact once this tokenizer has encoded the questions."""
        key = (self._fingerprint(spec), spec.encoding_key(), 0)
        c, n_dev = len(self.letters), len(self._devices_for(spec))
        if key in self._encodings:
            enc = self._encodings[key]
            if rows is None and n_rows != len(self.ids):  # cascade rows not chosen yet
                all_rows = busiest_tokens(enc.lengths, c, self.cfg.batch_size, None, n_dev)
                return int(all_rows * n_rows / len(self.ids))
            return busiest_tokens(enc.lengths, c, self.cfg.batch_size, rows, n_dev)
        per_question = self._tokens_per_question or spec.max_length * c
        return int(per_question * math.ceil(n_rows / n_dev))

    def _fingerprint(self, spec: ModelSpec) -> str:
        if spec.name not in self._fingerprints:
            self._fingerprints[spec.name] = tokenizer_fingerprint(spec.path)
        return self._fingerprints[spec.name]

    def _replan(
        self,
        current: ModelSpec | None,
        pending: list[tuple[ModelSpec, int]],
        credit: float = 0.0,
    ) -> dict:
        """Passes per model for ``current`` (loaded, ``credit`` seconds into its first
        pass) and the ``pending`` ones."""
        cands = []
        for spec, n_rows in pending:
            rows = self._rows if n_rows != len(self.ids) else None
            tokens = self._tokens(spec, n_rows, rows)
            est = self.costs.estimate(spec.name, spec.weight_bytes, tokens)
            if est is None:
                return {s.name: len(self.perms) for s, _ in pending}
            load, per_pass = est
            if spec is current:
                cands.append(Candidate(spec.name, spec.weight, 0.0, per_pass, credit=credit))
            else:
                cands.append(Candidate(spec.name, spec.weight, load, per_pass))
        plan = make_plan(cands, len(self.perms), self.budget.remaining())
        self.plans.append({"at_seconds": round(self.budget.elapsed(), 2), "passes": plan})
        log.info("plan (%.0fs left): %s", self.budget.remaining(), plan)
        return plan

    # --- one model --------------------------------------------------------------

    def _encode(self, spec: ModelSpec, tokenizer: Any, fp: str, k: int) -> Any:
        key = (fp, spec.encoding_key(), k)
        if key not in self._encodings:
            frame = permute_options(self.frame, self.letters, self.perms[k])
            if spec.family == "causal_lm":
                self._encodings[key] = _encode_llm(spec, tokenizer, frame, self.letters)
            else:
                self._encodings[key] = encode_questions(
                    tokenizer,
                    frame,
                    spec.max_length,
                    use_context=spec.use_context,
                    letters=self.letters,
                )
            enc = self._encodings[key]
            if enc.overlong:
                log.warning(
                    "%s: %d questions too long even without context", spec.name, enc.overlong
                )
            c = len(self.letters)
            total = padded_tokens(enc.lengths, c, self.cfg.batch_size)
            self._tokens_per_question = total / len(self.ids)
        return self._encodings[key]

    def _cache_file(self, spec: ModelSpec, k: int, rows: np.ndarray | None) -> Path:
        rows_key = "all" if rows is None else ",".join(map(str, rows.tolist()))
        parts = [self.qhash, spec.fingerprint(), str(self.perms[k].tolist()), rows_key]
        parts += [str(spec.max_length), str(spec.use_context), str(self.dtype)]
        parts += [repr(spec.encoding_key())]
        if spec.family == "causal_lm" and spec.prompt is None:  # llm:NAME: prompt from config
            parts.append(self._causal_for(spec).model_dump_json())
        return outputs.cache_path(self.out_dir, spec.name, parts)

    def _run_model(
        self, spec: ModelSpec, rows: np.ndarray | None, pending: list[tuple[ModelSpec, int]]
    ) -> list[np.ndarray]:
        """This model's passes (unpermuted); fewer than planned if the budget says so."""
        planned = len(self.perms)
        if self.costs.measured and self.budget.usable is not None:
            planned = self._replan(None, pending)[spec.name]
            if planned == 0:
                log.info("%s: skipped, does not fit the time budget", spec.name)
                self.runs[spec.name] = {"status": "skipped: does not fit the time budget"}
                return []
        files = [self._cache_file(spec, k, rows) for k in range(planned)]
        cached = [np.load(f) if f.is_file() else None for f in files]
        if all(c is not None for c in cached):
            self.runs[spec.name] = {"status": "cached", "passes": planned, "seconds": 0.0}
            return cached  # type: ignore[return-value]

        fp = self._fingerprint(spec)
        if fp not in self._tokenizers:
            self._tokenizers[fp] = _load_tokenizer(spec)
        tokenizer = self._tokenizers[fp]
        if spec.family == "causal_lm" and spec.prompt is None:
            spec.prompt = _prompt_from_config(self._causal_for(spec), tokenizer, spec.name)
        self._encode(spec, tokenizer, fp, 0)  # a prompt the tokenizer cannot express fails first
        began = self.clock()
        predictor = self._predictors(spec, tokenizer)
        load_seconds = self.clock() - began
        state = {"passes": planned, "timed": False}

        def on_batch(timing: BatchTiming) -> None:
            if not state["timed"]:
                state["timed"] = True
                self.costs.observe(
                    spec.name, timing.tokens, timing.seconds, load_seconds, spec.weight_bytes
                )
                if self.budget.usable is not None:
                    self._check_plan(spec, state, pending, load_seconds, timing.seconds)
            if self.budget.expired() and self.written:
                raise Interrupted("time budget spent")
            if self.budget.expired() and not self._overran:
                self._overran = True
                log.warning("time budget spent before the first model finished; finishing it")

        passes: list[np.ndarray] = []
        status = "done"
        try:
            if self.budget.usable is not None:
                # One untimed question first: lazy kernel set-up would inflate the warm-up
                # batch's timing, and with it every estimate.
                enc = self._encode(spec, tokenizer, fp, 0)
                predictor.warm_up(_inputs(enc), enc.lengths)
            for k in range(planned):
                if k >= state["passes"]:
                    break
                if cached[k] is not None:
                    passes.append(cached[k])
                    continue
                enc = self._encode(spec, tokenizer, fp, k)
                raw = predictor.logits(
                    _inputs(enc),
                    enc.lengths,
                    rows=rows,
                    desc=f"{spec.name} pass {k + 1}",
                    on_batch=on_batch,
                )
                passes.append(unpermute(raw, self.perms[k]))
                outputs.save_npy(passes[-1], files[k])
        except Interrupted as exc:
            status = f"stopped: {exc}"
            log.info("%s: %s after %d pass(es)", spec.name, status, len(passes))
        finally:
            predictor.close()
        self.runs[spec.name] = {
            "status": status if passes else f"skipped ({status})",
            "passes": len(passes),
            "seconds": round(self.clock() - began, 2),
            "load_seconds": round(load_seconds, 2),
            "devices": predictor.report(),
        }
        if self._unsplit(spec):
            self.runs[spec.name]["not_split"] = self._unsplit(spec)
        enc = self._encodings.get((fp, spec.encoding_key(), 0))
        if enc is not None and getattr(enc, "truncated", 0):  # causal LMs: contexts cut to fit
            self.runs[spec.name]["context_cut"] = enc.truncated
        return passes

    def _predictors(self, spec: ModelSpec, tokenizer: Any) -> ShardedPredictor:
        """This member on each of its devices, one copy per device."""
        devices = self._devices_for(spec)
        if self._unsplit(spec):
            log.info("%s: %s", spec.name, self._unsplit(spec))
        return ShardedPredictor.build(
            lambda device: self._predictor(spec, tokenizer, device), devices, self.clock
        )

    def _devices_for(self, spec: ModelSpec) -> list[Any]:
        return self.devices[:1] if self._unsplit(spec) else self.devices

    def _unsplit(self, spec: ModelSpec) -> str | None:
        """Why a member is not split over ``infer.devices``, or None."""
        if len(self.devices) < 2 or spec.family != "causal_lm":
            return None
        try:
            device_map = self._causal_for(spec).device_map
        except InferError:
            return None  # a bad override is reported when the member loads
        if not device_map:
            return None
        return (
            f"causal_lm.device_map={device_map!r} spreads it over the GPUs itself, "
            "so it runs once, not split over infer.devices"
        )

    def _predictor(self, spec: ModelSpec, tokenizer: Any, device: Any) -> Any:
        """One member on one device: the predictor its family needs."""
        if spec.family != "causal_lm":
            model = load_model(spec.path, device, self.dtype, self.cfg.attention)
            return EncoderPredictor(model, tokenizer, device, self.cfg.batch_size, self.clock)
        from infer.predictors.causal import CausalPredictor, load_llm
        from infer.predictors.offload.predictor import StreamedPredictor, refuse_unstreamable
        from infer.predictors.offload.stream import open_streamer

        causal = self._causal_for(spec)
        args = (tokenizer.pad_token_id, causal.batch_size, causal.prefix_cache, self.clock)
        if causal.offload == "layers":
            refuse_unstreamable(spec.path, causal, spec.meta)
            streamer = open_streamer(spec.path, device, self.dtype, causal, self.cfg.attention)
            return StreamedPredictor(streamer, *args)
        model = load_llm(spec.path, device, self.dtype, causal, self.cfg.attention, spec.meta)
        return CausalPredictor(model, *args)

    def _causal_for(self, spec: ModelSpec) -> CausalLMConfig:
        """The ``causal_lm`` section with this member's ``llm:NAME?key=value`` overrides."""
        if not spec.overrides:
            return self.causal
        try:
            return CausalLMConfig.model_validate({**self.causal.model_dump(), **spec.overrides})
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"])
            raise InferError(f"{spec.arg}: causal_lm.{where}: {error['msg']}") from None

    def _check_plan(
        self, spec: ModelSpec, state: dict, pending: list, load_seconds: float, spent: float
    ) -> None:
        plan = self._replan(spec, pending, credit=spent)
        if not any(plan.values()) and not self.written:
            measured = self.costs.measured[spec.name]
            per_pass = measured.seconds_per_token * self._tokens(spec, len(self.ids))
            raise BudgetError(
                f"time budget {self.budget.seconds:g}s is too small for even one model: "
                f"{spec.name} needs about {load_seconds + per_pass:.0f}s (load "
                f"{load_seconds:.1f}s + {per_pass:.1f}s per pass) and "
                f"{max(self.budget.remaining(), 0):.0f}s are left; nothing was written"
            )
        if plan.get(spec.name, 0) == 0:
            raise Interrupted("does not fit the time budget")
        state["passes"] = min(state["passes"], plan[spec.name])

    # --- the whole run ----------------------------------------------------------

    def ensemble(self) -> np.ndarray | None:
        names = [s.name for s in self.specs if s.name in self.logits]
        if not names:
            return None
        weights = {s.name: s.weight for s in self.specs}
        return combine(
            [self.logits[n] for n in names], [weights[n] for n in names], self.cfg.ensemble
        )

    def _finish(self, spec: ModelSpec, passes: list[np.ndarray]) -> None:
        self.logits[spec.name] = tta_mean(passes)
        outputs.write_logits(self.out_dir, self.ids, spec.name, self.logits[spec.name])
        ensemble = self.ensemble()
        if ensemble is not None and not np.isnan(ensemble).any():
            outputs.write_logits(self.out_dir, self.ids, ENSEMBLE, ensemble)
            outputs.write_predictions(self.out_dir, self.ids, ensemble)
            self.written = True
        self.on_progress(self)

    def run(self) -> None:
        if len(self.devices) > 1:
            log.info("questions split over %s, one model copy each", list(map(str, self.devices)))
        active = [s for s in self.specs if s.weight > 0]
        for spec in self.specs:
            if spec.weight == 0:
                self.runs[spec.name] = {"status": "skipped: weight 0"}
        by_weight = sorted(active, key=lambda s: -s.weight)  # stable: file order on ties
        named = set(self.cfg.cascade_expensive)
        if named:
            # Named members (e.g. llm:default) are the expensive stage, the rest are cheap.
            expensive = [s for s in by_weight if s.name in named or s.arg in named]
            cheap = [s for s in by_weight if s not in expensive]
            use_cascade = bool(cheap) and bool(expensive) and self.cfg.cascade_fraction < 1
        else:
            use_cascade = 0 < self.cfg.cascade_cheap < len(active)
            use_cascade = use_cascade and self.cfg.cascade_fraction < 1
            cheap, expensive = (
                split_models(by_weight, self.cfg.cascade_cheap) if use_cascade else ([], by_weight)
            )
        if not use_cascade:
            cheap, expensive = [], by_weight
        n = len(self.ids)
        n_escalated = math.ceil(self.cfg.cascade_fraction * n) if use_cascade else n
        queue = [(s, n) for s in cheap] + [(s, n_escalated) for s in expensive]
        rows: np.ndarray | None = None
        for i, (spec, _) in enumerate(queue):
            if use_cascade and spec is expensive[0]:
                cheap_ensemble = self.ensemble()
                if cheap_ensemble is not None and not np.isnan(cheap_ensemble).any():
                    rows = self._rows = escalate(cheap_ensemble, self.cfg.cascade_fraction)
                    self.cascade = {
                        "cheap": [s.name for s in cheap],
                        "expensive": [s.name for s in expensive],
                        "fraction": self.cfg.cascade_fraction,
                        "escalated": len(rows),
                        "cheap_logits": cheap_ensemble,
                        "rows": rows,
                    }
            passes = self._run_model(spec, rows, queue[i:])
            if passes:
                self._finish(spec, passes)


def _load_tokenizer(spec: ModelSpec) -> Any:
    if spec.family != "causal_lm":
        return load_tokenizer(spec.path)
    from sciqa.assets.llm import load_causal_tokenizer
    from sciqa.errors import SciqaError

    try:
        return load_causal_tokenizer(str(spec.path), local_only=True)
    except SciqaError as exc:
        raise InferError(str(exc)) from None


def _prompt_from_config(cfg: CausalLMConfig, tokenizer: Any, name: str) -> Any:
    from sciqa.errors import SciqaError
    from sciqa.scoring.llm_prompts import PromptSpec

    try:
        return PromptSpec.from_config(cfg, tokenizer, name)
    except SciqaError as exc:
        raise InferError(str(exc)) from None


def _encode_llm(spec: ModelSpec, tokenizer: Any, frame: pd.DataFrame, letters: list[str]) -> Any:
    from sciqa.errors import SciqaError
    from sciqa.scoring.llm_prompts import encode_for_llm

    try:
        enc = encode_for_llm(tokenizer, frame, spec.prompt, letters=letters, name=spec.name)
    except SciqaError as exc:
        raise InferError(str(exc)) from None
    if enc.truncated:
        log.info("%s: context cut to fit for %d question(s)", spec.name, enc.truncated)
    return enc


def _inputs(enc: Any) -> Any:
    """What a predictor reads: the encoder features, or the whole LLM encoding."""
    return enc.features if isinstance(enc, EncodedQuestions) else enc
