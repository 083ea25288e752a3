"""causal_lm.offload = layers on the packaged SmolLM2 (a GGUF, converted then split):
the same scores as the resident model, fp32, in every mode, with and without context."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

pytestmark = [pytest.mark.assets, pytest.mark.slow]  # ~2 min on 2 idle cores

N_QUESTIONS = 4


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(path, tokenizer, resident fp32 model, a streamer over a fresh split)."""
    from infer.predictors.offload.stream import open_streamer
    from sciqa.assets.llm import causal_lm_path, load_causal_lm, load_causal_tokenizer
    from sciqa.config import load_config

    path = Path(causal_lm_path("llm:default"))
    tokenizer = load_causal_tokenizer(str(path))
    model = load_causal_lm(str(path), dtype=torch.float32).eval()
    layers = tmp_path_factory.mktemp("layers")
    cfg = load_config(None, [f"causal_lm.offload_dir={layers}", "causal_lm.offload_group=4"])
    streamer = open_streamer(path, torch.device("cpu"), torch.float32, cfg.causal_lm, "sdpa")
    yield path, tokenizer, model, streamer
    streamer.close()


@pytest.fixture(scope="module")
def questions():
    from sciqa.assets.question_sets import benchmark_questions
    from sciqa.assets.registry import packaged_wikipedia

    frame = benchmark_questions("arc-challenge")[0].head(N_QUESTIONS).copy()
    leads = packaged_wikipedia()["text"].tolist()
    frame["context"] = [" ".join(lead.split()[:80]) for lead in leads[:N_QUESTIONS]]
    return frame


@pytest.mark.parametrize("context", [True, False])
@pytest.mark.parametrize("mode", ["cloze", "letter", "yes_no"])
def test_streamed_smollm2_scores_equal_resident(smollm2, questions, mode, context):
    from infer.predictors.offload.predictor import streamed_scores
    from sciqa.config import load_config
    from sciqa.metrics import top3_letters
    from sciqa.scoring.llm_prompts import PromptSpec, encode_for_llm
    from sciqa.scoring.llm_scoring import ScoreHead, score_rows

    _, tokenizer, model, streamer = smollm2
    sets = [f"causal_lm.mode={mode}", f"causal_lm.use_context={context}"]
    cfg = load_config(None, sets).causal_lm
    enc = encode_for_llm(tokenizer, questions, PromptSpec.from_config(cfg, tokenizer, "smollm2"))
    rows, head, pad = list(range(len(enc))), ScoreHead.of(enc), tokenizer.pad_token_id
    # The same micro-batches of 3 on both sides (padding moves fp32 sums by ~1e-7).
    expected = torch.cat([score_rows(model, enc, rows[i : i + 3], head, pad) for i in (0, 3)])
    got = streamed_scores(streamer, enc, rows, head, pad, 3, True)
    assert np.isfinite(got.numpy()).all()
    assert float((got - expected).abs().max()) <= 1e-5
    assert top3_letters(got.numpy()) == top3_letters(expected.numpy())
    assert streamer.stats.peak_weight_bytes < sum(streamer.split.sizes) / 3
