"""The parts of a causal LM that layer streaming reads one at a time.

A decoder-only model of a supported family is embeddings -> decoder layers -> final norm
+ head. :func:`layout_of` names the parameters of each part from the model's config alone
(an empty model on the meta device), which both the one-time split (:mod:`.split`) and
the streamer (:mod:`.stream`) follow.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infer.errors import InferError


@dataclass(frozen=True)
class Part:
    """One file of a split: a name (``embed``, ``layer_00003``, ``head``) and the full
    parameter names it holds, as the model's ``state_dict`` names them."""

    name: str
    tensors: tuple[str, ...]

    @property
    def file(self) -> str:
        return f"{self.name}.safetensors"


# Families whose forward is exactly embeddings -> layers(rotary, mask) -> norm -> lm_head.
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")
NEEDED = "model.embed_tokens, model.layers, model.norm, model.rotary_emb and lm_head"


def skeleton(path: Path, dtype: Any, attention: str = "sdpa") -> Any:
    """The causal LM of ``path`` with every weight on the meta device (no memory)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InferError(f"{path}: cannot read its config.json: {reason}") from None
    with init_empty_weights(), _no_init():
        try:
            model = AutoModelForCausalLM.from_config(
                config, attn_implementation=attention, dtype=dtype
            )
        except (ValueError, ImportError) as exc:
            if "attn" not in str(exc).lower() and "attention" not in str(exc).lower():
                raise InferError(f"{path}: {str(exc).splitlines()[0]}") from None
            model = AutoModelForCausalLM.from_config(
                config, attn_implementation="eager", dtype=dtype
            )
    return model.eval()


def _no_init() -> Any:
    """Skip the random init of the empty weights: on the meta device it does nothing but
    its first call imports torch._dynamo (~20 s on a busy 2-core machine)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # another transformers layout: pay the init
        return contextlib.nullcontext()
    return no_init_weights()


def modules_of(model: Any) -> tuple[Any, list[Any], Any, Any, Any]:
    """(embed_tokens, decoder layers, norm, rotary_emb, lm_head), or a one-line refusal."""
    import torch

    arch, family = type(model).__name__, model.config.model_type
    base = getattr(model, "model", None)
    found = base is not None and all(
        hasattr(base, n) for n in ("embed_tokens", "layers", "norm", "rotary_emb")
    )
    if (
        not found
        or not isinstance(base.layers, torch.nn.ModuleList)
        or not hasattr(model, "lm_head")
    ):
        raise InferError(
            f"causal_lm.offload = layers: cannot locate the decoder layers of {arch} "
            f"(model_type {family!r}): streaming needs {NEEDED}, as "
            f"{', '.join(SUPPORTED)} have; use causal_lm.offload=none"
        )
    if family not in SUPPORTED:
        raise InferError(
            f"causal_lm.offload = layers: {arch} (model_type {family!r}) is not a family it "
            f"streams ({', '.join(SUPPORTED)}): its forward may do more than embeddings, "
            "layers, norm and head; use causal_lm.offload=none"
        )
    return base.embed_tokens, list(base.layers), base.norm, base.rotary_emb, model.lm_head


def parts_of(model: Any) -> tuple[list[Part], dict[str, str]]:
    """The split layout of ``model``: embeddings, one part per decoder layer, norm + head;
    and its tied parameters (stored once in a checkpoint)."""
    embed, layers, norm, _rotary, head = modules_of(model)
    names = {id(m): n for n, m in model.named_modules()}
    keys = list(model.state_dict())

    def under(*modules: Any) -> tuple[str, ...]:
        prefixes = tuple(names[id(m)] + "." for m in modules)
        return tuple(k for k in keys if k.startswith(prefixes))

    parts = [Part("embed", under(embed))]
    parts += [Part(f"layer_{i:05d}", under(layer)) for i, layer in enumerate(layers)]
    parts.append(Part("head", under(norm, head)))
    placed = {t for p in parts for t in p.tensors}
    if stray := [k for k in keys if k not in placed]:
        raise InferError(
            f"causal_lm.offload = layers: {type(model).__name__} has weights outside its "
            f"layers, norm and head ({stray[0]}, ...); use causal_lm.offload=none"
        )
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    return parts, {str(k): str(v) for k, v in dict(tied).items()}


def layout_of(path: Path) -> tuple[list[Part], dict[str, str]]:
    import torch

    return parts_of(skeleton(path, torch.float32, "eager"))
