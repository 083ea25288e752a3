"""Which checkpoints to run: expand MODEL_DIR arguments into checked model directories.

An argument is a model directory (anything ``AutoModelForMultipleChoice.from_pretrained``
loads: a ``sciqa train`` fold, a Kaggle-style ``run_i``), a ``sciqa train`` RUN_DIR (its
finished ``fold_*`` dirs), a glob of either, or ``llm:<default|path|Hub name>``: a causal
LM that scores options zero-shot (``causal_lm`` config). A fold's ``sciqa_model.json``
says how its inputs were encoded; dirs without one use ``infer.max_length`` /
``infer.use_context`` (encoders) or the ``causal_lm`` section (causal LMs).

This module reads only JSON, file names and the first bytes of weight files
(``llm:default`` converts the packaged GGUF once, through transformers), so it needs no
torch.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infer.errors import InferError
from sciqa.assets.llm import LLM_PREFIX, causal_lm_path, is_causal_lm
from sciqa.runs import FOLD_METRICS, FOLD_PREFIX, MODEL_FORMAT, MODEL_INFO, OOF
from sciqa.scoring.llm_prompts import PromptSpec
from sciqa.weights import WeightsError, check_weights

WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "model*.bin")


@dataclass
class ModelSpec:
    """One checkpoint to run and how to encode questions for it."""

    path: Path
    name: str  # unique label: file names under OUT_DIR/logits and rows of the table
    max_length: int
    use_context: bool
    letters: list[str] | None = None  # option letters it was trained on; None = unknown
    run_dir: Path | None = None  # the sciqa train run it belongs to (holds oof.parquet)
    meta: dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0
    # "mc" (AutoModelForMultipleChoice) or "causal_lm" (option scorer); what that means
    # for loading, encoding and caching it: infer.predictors.families
    family: str = "mc"
    prompt: PromptSpec | None = None  # causal_lm: how it encodes; None = from config at load
    arg: str = ""  # the command-line argument it came from (infer.cascade_expensive)
    overrides: dict[str, str] = field(default_factory=dict)  # llm:NAME?key=value causal_lm keys

    @property
    def weight_bytes(self) -> int:
        """Size of the weight files: the cost proxy before a model has been timed."""
        return sum(p.stat().st_size for pat in WEIGHT_FILES for p in self.path.glob(pat)) or 1

    def fingerprint(self) -> str:
        """Identity for the logits cache: path plus size and mtime of every weight file."""
        parts = [str(self.path.resolve())]
        for pattern in (*WEIGHT_FILES, "config.json", MODEL_INFO):
            for file in sorted(self.path.glob(pattern)):
                stat = file.stat()
                parts.append(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}")
        return "|".join(parts)


def _is_model_dir(path: Path) -> bool:
    """Weights plus their config: a full model, or a LoRA adapter saved over a 4/8-bit base."""
    has_config = (path / "config.json").is_file() or (path / "adapter_config.json").is_file()
    return has_config and any(any(path.glob(pattern)) for pattern in WEIGHT_FILES)


def _read_meta(path: Path) -> dict[str, Any]:
    file = path / MODEL_INFO
    if not file.is_file():
        return {}
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InferError(f"{file}: not valid JSON ({exc}); re-run `sciqa train`") from None
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise InferError(
            f"{file}: format {found!r} is not {MODEL_FORMAT!r}; "
            "re-train it or delete the file to use infer.max_length / infer.use_context"
        )
    return meta


def _check_weights(path: Path) -> None:
    """Refuse a member whose weights were cut short now, before any model runs, rather
    than in a traceback from deep inside its load."""
    try:
        check_weights(path)
    except WeightsError as exc:
        raise InferError(str(exc)) from None


def _spec(path: Path, run_dir: Path | None, max_length: int, use_context: bool) -> ModelSpec:
    _check_weights(path)
    meta = _read_meta(path)
    letters = meta.get("letters")
    causal = meta.get("family") == "causal_lm" or (not meta and is_causal_lm(path))
    prompt = PromptSpec.from_meta(meta["prompt"]) if causal and "prompt" in meta else None
    return ModelSpec(
        path=path,
        name=path.name if run_dir is None else f"{run_dir.name}-{path.name}",
        max_length=int(meta.get("max_length", max_length)),
        use_context=bool(meta.get("use_context", use_context)),
        letters=list(letters) if letters else None,
        run_dir=run_dir,
        meta=meta,
        family="causal_lm" if causal else "mc",
        prompt=prompt,
    )


def _llm_spec(arg: str) -> ModelSpec:
    """``llm:NAME[?key=value&...]``: a causal LM scoring zero-shot with the ``causal_lm``
    section, where the ``key=value`` pairs override it for this member only (so one LLM
    can join the ensemble twice, e.g. ``llm:default?normalise=pmi``)."""
    from sciqa.errors import SciqaError

    target_name, _, query = arg.partition("?")
    overrides = _parse_overrides(arg, query)
    try:
        target = causal_lm_path(target_name)
    except SciqaError as exc:
        raise InferError(f"{arg}: {exc}") from None
    assert target is not None  # an llm: argument always resolves or raises
    _check_weights(Path(target))  # a Hub name passes: it is not a folder
    label = target_name[len(LLM_PREFIX) :] or "default"
    name = "llm-" + (label if label == "default" else Path(label).name.removesuffix(".gguf"))
    name = "-".join([name, *overrides.values()])
    return ModelSpec(
        path=Path(target),
        name=name,
        max_length=0,
        use_context=True,
        family="causal_lm",
        overrides=overrides,
    )


def _parse_overrides(arg: str, query: str) -> dict[str, str]:
    """``mode=cloze&normalise=pmi`` -> a dict of ``causal_lm`` keys.

    >>> _parse_overrides("llm:default?normalise=pmi", "normalise=pmi")
    {'normalise': 'pmi'}
    """
    from sciqa.config import CausalLMConfig

    overrides: dict[str, str] = {}
    for pair in filter(None, query.split("&")):
        key, sep, value = pair.partition("=")
        if not sep or key not in CausalLMConfig.model_fields:
            valid = ", ".join(CausalLMConfig.model_fields)
            raise InferError(f"{arg}: {pair!r} is not key=value with a causal_lm key ({valid})")
        overrides[key] = value
    return overrides


def _fold_dirs(run_dir: Path) -> list[Path]:
    folds = sorted(
        (p for p in run_dir.glob(f"{FOLD_PREFIX}*") if p.is_dir()),
        key=lambda p: (len(p.name), p.name),  # fold_10 after fold_9
    )
    return [p for p in folds if (p / FOLD_METRICS).is_file() and _is_model_dir(p)]


def _expand_one(path: Path, max_length: int, use_context: bool) -> list[ModelSpec]:
    if not path.exists():
        raise InferError(f"{path}: no such model directory")
    if not path.is_dir():
        raise InferError(f"{path}: not a directory; pass a model dir or a sciqa train run dir")
    if _is_model_dir(path):
        # A fold dir inside a train run still knows its run (for --weights auto).
        parent = path.parent if (path.parent / OOF).is_file() else None
        return [_spec(path, parent, max_length, use_context)]
    if any(path.glob(f"{FOLD_PREFIX}*")):
        folds = _fold_dirs(path)
        if not folds:
            raise InferError(
                f"{path}: no finished fold (a fold_* dir with {FOLD_METRICS} and weights); "
                "wait for `sciqa train` to finish or pass model dirs"
            )
        return [_spec(fold, path, max_length, use_context) for fold in folds]
    raise InferError(
        f"{path}: not a model (no config.json + weights) and not a sciqa train run "
        "(no fold_* dirs); pass a directory saved with save_pretrained"
    )


def expand_model_dirs(args: list[str], *, max_length: int, use_context: bool) -> list[ModelSpec]:
    """Model specs for the command-line arguments, in order, each model once.

    Names are unique: a clash gets ``-2``, ``-3``... so logits files never overwrite.
    """
    if not args:
        raise InferError("no MODEL_DIR given; pass fold dirs, run dirs or a glob")
    specs: list[ModelSpec] = []
    seen: set[tuple] = set()
    for arg in args:
        if arg.startswith(LLM_PREFIX):
            matches = [arg]
        elif glob.has_magic(arg):
            matches = sorted(glob.glob(os.path.expanduser(arg)))
            if not matches:
                raise InferError(f"{arg}: the glob matches nothing")
        else:
            matches = [os.path.expanduser(arg)]
        for match in matches:
            expanded = (
                [_llm_spec(match)]
                if match.startswith(LLM_PREFIX)
                else _expand_one(Path(match), max_length, use_context)
            )
            for spec in expanded:
                spec.arg = arg
                key = (spec.path.resolve(), tuple(spec.overrides.items()))
                if key not in seen:
                    seen.add(key)
                    specs.append(spec)
    names: dict[str, int] = {"ensemble": 1}  # reserved for OUT_DIR/logits/ensemble.npy
    for spec in specs:
        count = names.get(spec.name, 0) + 1
        names[spec.name] = count
        if count > 1:
            spec.name = f"{spec.name}-{count}"
    return specs


def check_letters(specs: list[ModelSpec], letters: list[str], source: str) -> None:
    """Refuse models trained on another option count than the questions have, except
    cloze-scored causal LMs: they score each option alone, so the count only changes the
    softmax (a letter prompt that never showed E could not answer it)."""
    for spec in specs:
        cloze = (
            spec.family == "causal_lm" and spec.prompt is not None and spec.prompt.mode == "cloze"
        )
        if spec.letters is not None and len(spec.letters) != len(letters) and not cloze:
            raise InferError(
                f"{spec.path}: trained on {len(spec.letters)} options "
                f"({spec.letters[0]}-{spec.letters[-1]}) but {source} has {len(letters)} "
                f"({letters[0]}-{letters[-1]}); use models trained on this option count"
            )
