"""``infer.dtype=auto`` on CPU: a causal LM stored in bf16 (llm:qwen) runs in bf16."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from infer.predictors import families  # noqa: E402
from sciqa.assets import convert  # noqa: E402
from sciqa.config import CausalLMConfig, InferConfig  # noqa: E402


@pytest.fixture(scope="module")
def bf16_llm(tiny_llm: Path, tmp_path_factory) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("bf16") / "llm"
    model = AutoModelForCausalLM.from_pretrained(tiny_llm).to(torch.bfloat16)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_llm).save_pretrained(folder)
    return folder


def _loading(dtype: str = "auto") -> families.Loading:
    infer = InferConfig(dtype=dtype, device="cpu")
    return families.Loading.resolve(infer, CausalLMConfig(), time.monotonic)


@pytest.mark.parametrize("has_bf16", [True, False])
def test_auto_keeps_a_bf16_folder_in_bf16_where_the_cpu_has_it(
    bf16_llm, tiny_llm, monkeypatch, has_bf16
):
    monkeypatch.setattr(convert, "cpu_has_bf16", lambda cpuinfo=None: has_bf16)
    loading = _loading()
    want = torch.bfloat16 if has_bf16 else torch.float32
    assert loading.causal_dtype(SimpleNamespace(path=bf16_llm)) == want
    assert loading.causal_dtype(SimpleNamespace(path=tiny_llm)) == torch.float32  # fp32 folder
    assert _loading("fp32").causal_dtype(SimpleNamespace(path=bf16_llm)) == torch.float32


def test_the_logits_cache_key_follows_the_dtype_it_runs_in(bf16_llm, monkeypatch):
    spec = SimpleNamespace(
        path=bf16_llm, max_length=64, use_context=False, prompt="p", family="causal_lm"
    )
    family = families.CausalFamily()
    monkeypatch.setattr(family, "encoding_key", lambda spec: ("letter",))
    monkeypatch.setattr(convert, "cpu_has_bf16", lambda cpuinfo=None: True)
    on = family.cache_inputs(spec, _loading())
    monkeypatch.setattr(convert, "cpu_has_bf16", lambda cpuinfo=None: False)
    off = family.cache_inputs(spec, _loading())
    assert on != off and str(torch.bfloat16) in on and str(torch.float32) in off
