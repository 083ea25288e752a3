"""fp32 linears through oneDNN on CPU (infer.predictors.kernels, causal_lm.onednn_fp32)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from infer.predictors import kernels  # noqa: E402
from infer.predictors.causal import CausalPredictor  # noqa: E402
from infer.predictors.kernels import OneDNNLinear, fp32_kernels  # noqa: E402
from sciqa.assets.llm import load_causal_lm, load_causal_tokenizer  # noqa: E402
from sciqa.config import load_config  # noqa: E402
from sciqa.io import read_questions  # noqa: E402
from sciqa.scoring.llm_prompts import PromptSpec, encode_for_llm  # noqa: E402

needs_onednn = pytest.mark.skipif(kernels._onednn_op() is None, reason="torch without oneDNN")


@needs_onednn
def test_fp32_cpu_linears_go_through_onednn_with_the_same_results():
    torch.manual_seed(0)
    layer, x = torch.nn.Linear(48, 24), torch.randn(3, 5, 48)
    with torch.inference_mode():
        expected = layer(x)
        with OneDNNLinear() as mode:
            got = layer(x)
            layer.bfloat16()(x.bfloat16())  # bf16 already runs oneDNN: left alone
    assert mode.calls == 1
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@needs_onednn
def test_training_linears_are_left_to_torch():
    layer = torch.nn.Linear(8, 4)
    with OneDNNLinear() as mode:
        layer(torch.randn(2, 8)).sum().backward()
    assert mode.calls == 0 and layer.weight.grad is not None


def test_an_op_that_refuses_falls_back_to_torch(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("unsupported layout")

    monkeypatch.setattr(kernels, "_onednn_op", lambda: refuse)
    layer, x = torch.nn.Linear(8, 4), torch.randn(2, 8)
    expected = x @ layer.weight.T + layer.bias
    with torch.inference_mode(), OneDNNLinear() as mode:
        torch.testing.assert_close(layer(x), expected)
        layer(x)
    assert mode.calls == 0 and mode.op is None


def test_off_or_off_cpu_changes_nothing():
    model = torch.nn.Linear(2, 2)
    model.device = torch.device("meta")
    assert not isinstance(fp32_kernels(model, True), OneDNNLinear)
    model.device = torch.device("cpu")
    assert not isinstance(fp32_kernels(model, False), OneDNNLinear)


@needs_onednn
def test_causal_predictor_scores_the_same_through_onednn(tiny_llm, qfile, monkeypatch):
    tok = load_causal_tokenizer(str(tiny_llm))
    model = load_causal_lm(str(tiny_llm)).eval()
    cfg = load_config(None, ["causal_lm.mode=letter"]).causal_lm
    enc = encode_for_llm(tok, read_questions(qfile), PromptSpec.from_config(cfg, tok, "t"))
    op, calls = kernels._onednn_op(), []

    def counted(*args, **kwargs):
        calls.append(args[1].shape)
        return op(*args, **kwargs)

    plain = CausalPredictor(model, tok.pad_token_id, 3, True, onednn_fp32=False)
    expected = plain.logits(enc, enc.lengths)
    monkeypatch.setattr(kernels, "_onednn_op", lambda: counted)
    got = CausalPredictor(model, tok.pad_token_id, 3, True).logits(enc, enc.lengths)
    assert len(calls) > 0
    np.testing.assert_allclose(got, expected, atol=1e-5)
