"""Causal LMs as local folders: the packaged GGUF converted once, or a path / Hub name.

The packaged SmolLM2, Gemma and Qwen are 4-bit GGUFs. ``transformers serve`` cannot load a
GGUF directly (its GGUF config lacks ``architectures``) and dequantising on every load costs
~30 s, so the GGUF is converted once (streamed, in bf16 where the CPU has it:
:mod:`sciqa.assets.convert`) into a safetensors folder under a cache dir, keyed by the GGUF
file's path, size and mtime and the stored dtype. ``data_gen`` serves that folder;
``train`` and ``infer`` load it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from sciqa.assets.convert import convert_gguf
from sciqa.assets.registry import default_cache_dir, resolve_model
from sciqa.errors import SciqaError
from sciqa.weights import loading_weights

# A GGUF this big (Qwen-1.5B's 1.1 GB; not SmolLM2's 0.1 or Gemma's 0.25) converts to bf16
# where the CPU has it: half the disk and memory of fp32. Smaller ones stay fp32, the
# precision their measured figures (the demo's) were taken in.
BF16_FROM_BYTES = 512 * 2**20


class LLMLoadError(SciqaError):
    """A causal LM or its tokenizer cannot be loaded as configured."""


def prepare_model(name: str, cache_dir: Path | None = None, dtype: str | None = None) -> str:
    """A directory or Hub name that ``from_pretrained`` loads for ``models.llm = name``.

    A GGUF file is converted (once; later calls reuse the folder) into a safetensors
    folder under ``cache_dir``, stored in ``dtype`` (default: a GGUF of BF16_FROM_BYTES or
    more in bf16 where the CPU supports it, else fp32 with a warning; a smaller one in
    fp32; sciqa/assets/convert.py); a directory or Hub name is passed through.
    """
    from sciqa.assets.convert import cpu_has_bf16, storage_dtype

    source = resolve_model(name, "llm", cache_dir)
    if not source.gguf_file:
        return source.name_or_path
    gguf = Path(source.name_or_path) / source.gguf_file
    stat = gguf.stat()
    tag = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    big = stat.st_size >= BF16_FROM_BYTES
    stored = dtype or ("bf16" if big and cpu_has_bf16() else "fp32")
    # fp32 folders keep their old names, so existing caches are reused as they are.
    suffix = "" if stored == "fp32" else f"-{stored}"
    target = (cache_dir or default_cache_dir()) / f"{gguf.stem}-{tag[:10]}{suffix}"
    if (target / "config.json").is_file():
        return str(target)
    if dtype is None and big:
        stored = storage_dtype()  # the warning, once, when a conversion is due
    convert_gguf(gguf, target, stored)
    return str(target)


def is_causal_lm(path: str | os.PathLike[str]) -> bool:
    """Whether a model folder holds a causal LM (its config names a ``*ForCausalLM``)."""
    import json

    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    except ValueError:
        return False
    return any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)


def load_causal_tokenizer(name: str, *, local_only: bool = False) -> Any:
    """The tokenizer with a pad token (causal LMs often have none: EOS stands in)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_only)
    except (OSError, ValueError, TypeError) as exc:
        raise LLMLoadError(f"{name}: cannot load its tokenizer: {_first_line(exc)}") from None
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise LLMLoadError(f"{name}: its tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_kwargs(load_in: str, device_map: str | None) -> dict[str, Any]:
    """``from_pretrained`` arguments for bitsandbytes 4/8-bit and accelerate's device map.

    Both need CUDA; on a machine without it they fail here with a one-line reason.
    """
    kwargs: dict[str, Any] = {}
    if load_in != "none" or device_map:
        import torch

        if not torch.cuda.is_available():
            key = "causal_lm.load_in" if load_in != "none" else "causal_lm.device_map"
            raise LLMLoadError(
                f"{key}: 4/8-bit loading and device_map need a CUDA GPU and none is visible; "
                "use causal_lm.load_in=none and causal_lm.device_map=null on this machine"
            )
    if load_in != "none":
        import torch
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=load_in == "4bit",
            load_in_8bit=load_in == "8bit",
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16
            if torch.cuda.is_bf16_supported()
            else torch.float16,
        )
        kwargs.setdefault("device_map", device_map or {"": 0})
    if device_map:
        kwargs["device_map"] = device_map
    return kwargs


def load_causal_lm(
    name: str,
    *,
    dtype: Any = None,
    attention: str = "sdpa",
    load_in: str = "none",
    device_map: str | None = None,
    local_only: bool = False,
) -> Any:
    """``AutoModelForCausalLM`` in ``dtype`` with ``attention`` (eager where unsupported)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {
        "local_files_only": local_only,
        **quantization_kwargs(load_in, device_map),
    }
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        with loading_weights(name):
            try:
                return AutoModelForCausalLM.from_pretrained(
                    name, attn_implementation=attention, **kwargs
                )
            except (ValueError, ImportError) as exc:
                if "attn" not in str(exc).lower() and "attention" not in str(exc).lower():
                    raise
                return AutoModelForCausalLM.from_pretrained(
                    name, attn_implementation="eager", **kwargs
                )
    except (OSError, ValueError, ImportError) as exc:
        raise LLMLoadError(f"{name}: cannot load as a causal LM: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


LLM_PREFIX = "llm:"


def causal_lm_path(name: str, cache_dir: Path | None = None) -> str | None:
    """What to load for a causal LM named ``llm:<default|path|Hub name>``, or a model
    folder whose config is a causal LM; ``None`` when ``name`` is neither."""
    if name.startswith(LLM_PREFIX):
        return prepare_model(name[len(LLM_PREFIX) :] or "default", cache_dir)
    path = Path(name).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return prepare_model(str(path), cache_dir)
    return str(path) if is_causal_lm(path) else None
