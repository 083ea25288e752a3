"""sciqa infer with causal LMs (llm:NAME and causal folds) on a tiny random Llama."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from infer.commands import run_infer  # noqa: E402
from sciqa.assets.llm import load_causal_lm, load_causal_tokenizer  # noqa: E402
from sciqa.scoring.llm_prompts import PromptSpec, encode_for_llm  # noqa: E402
from sciqa.scoring.llm_scoring import ScoreHead, score_rows  # noqa: E402
from sciqa.submission import read_submission  # noqa: E402
from tests.builders import (  # noqa: E402
    INFER_SMALL,
    WORDS,
    build_tiny_llama,
    cut_in_half,
    load_logits,
    make_config,
    make_model,
)


@pytest.mark.parametrize("mode", ["cloze", "letter", "yes_no"])
def test_zero_shot_llm_scores_every_option(qfile, tiny_llm, tmp_path, mode):
    out = tmp_path / "out"
    cfg = make_config(*INFER_SMALL, f"causal_lm.mode={mode}")
    result = run_infer(qfile, [f"llm:{tiny_llm}"], out, cfg)
    assert [m["model"] for m in result["models"]] == ["llm-tiny", "ensemble"]
    got = load_logits(out)["llm-tiny"]
    # The same scores straight from the core, one question at a time and without the cache.
    tok = load_causal_tokenizer(str(tiny_llm))
    model = load_causal_lm(str(tiny_llm)).eval()
    from sciqa.io import read_questions

    enc = encode_for_llm(
        tok, read_questions(qfile), PromptSpec.from_config(cfg.causal_lm, tok, "t")
    )
    head = ScoreHead.of(enc)
    expected = torch.cat(
        [
            score_rows(model, enc, [i], head, tok.pad_token_id, prefix_cache=False)
            for i in range(len(enc))
        ]
    ).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert len(read_submission(out / "submission.csv")) == 10


def test_tta_matters_for_letter_scoring_only(qfile, tiny_llm, tmp_path):
    def run(mode: str, tta: int) -> np.ndarray:
        out = tmp_path / f"{mode}{tta}"
        run_infer(
            qfile,
            [f"llm:{tiny_llm}"],
            out,
            make_config(*INFER_SMALL, f"causal_lm.mode={mode}", f"infer.tta={tta}"),
        )
        return load_logits(out)["llm-tiny"]

    np.testing.assert_allclose(run("cloze", 1), run("cloze", 3), atol=1e-5)  # option order is moot
    assert not np.allclose(run("letter", 1), run("letter", 3), atol=1e-4)  # letters see the list


def test_llm_joins_the_ensemble_and_reruns_from_cache(qfile, tiny_llm, tmp_path):
    mc = make_model(tmp_path / "bert", 3, meta=False)
    out = tmp_path / "out"
    cfg = make_config(*INFER_SMALL, "infer.use_context=false")
    first = run_infer(qfile, [str(mc), f"llm:{tiny_llm}"], out, cfg)
    assert {m["model"] for m in first["models"]} == {"bert", "llm-tiny", "ensemble"}
    again = run_infer(qfile, [str(mc), f"llm:{tiny_llm}"], out, cfg)
    assert {m["status"] for m in again["models"] if m["model"] != "ensemble"} == {"cached"}
    changed = run_infer(
        qfile, [f"llm:{tiny_llm}"], out, make_config(*INFER_SMALL, "causal_lm.mode=letter")
    )
    assert changed["models"][0]["status"] == "done"  # another mode is not served from cache


def test_causal_lm_folder_is_detected_without_the_prefix(qfile, tiny_llm, tmp_path):
    result = run_infer(qfile, [str(tiny_llm)], tmp_path / "out", make_config(*INFER_SMALL))
    assert result["models"][0]["model"] == "tiny"
    assert np.isfinite(load_logits(tmp_path / "out")["tiny"]).all()


def test_cascade_can_name_the_llm_as_the_expensive_stage(qfile, tiny_llm, tmp_path):
    mc = make_model(tmp_path / "bert", 3, meta=False)
    cfg = make_config(
        *INFER_SMALL, "infer.cascade_fraction=0.3", f"infer.cascade_expensive=[llm:{tiny_llm}]"
    )
    result = run_infer(qfile, [f"llm:{tiny_llm}", str(mc)], tmp_path / "out", cfg)
    assert result["cascade"]["cheap"] == ["bert"]
    assert result["cascade"]["expensive"] == ["llm-tiny"]
    llm = load_logits(tmp_path / "out")["llm-tiny"]
    assert (~np.isnan(llm).any(axis=1)).sum() == 3  # ceil(0.3 * 10) least-confident questions
    assert len(read_submission(tmp_path / "out" / "submission.csv")) == 10


def test_fold_meta_prompt_wins_over_config(qfile, tiny_llm, tmp_path):
    fold = tmp_path / "run" / "fold_0"
    fold.parent.mkdir()
    import shutil

    shutil.copytree(tiny_llm, fold)
    tok = load_causal_tokenizer(str(fold))
    spec = PromptSpec.from_config(
        make_config(*INFER_SMALL, "causal_lm.mode=letter").causal_lm, tok, "t"
    )
    meta = {
        "format": "sciqa-mc/1",
        "family": "causal_lm",
        "prompt": spec.to_meta(),
        "max_length": spec.max_length,
        "use_context": True,
        "letters": list("ABCDE"),
    }
    (fold / "sciqa_model.json").write_text(json.dumps(meta))
    (fold / "metrics.json").write_text("{}")
    run_infer(
        qfile, [str(fold.parent)], tmp_path / "a", make_config(*INFER_SMALL, "causal_lm.mode=cloze")
    )
    run_infer(
        qfile,
        [f"llm:{tiny_llm}"],
        tmp_path / "b",
        make_config(*INFER_SMALL, "causal_lm.mode=letter"),
    )
    np.testing.assert_allclose(
        load_logits(tmp_path / "a")["run-fold_0"],
        load_logits(tmp_path / "b")["llm-tiny"],
        atol=1e-5,
    )


@pytest.mark.parametrize(
    ("arg", "sets", "message"),
    [
        ("llm:./no/such/model", [], "no such file or directory"),
        ("BYTES", ["causal_lm.mode=letter", "causal_lm.chat_template=off"], "into 2 tokens"),
        ("NOCHAT", ["causal_lm.mode=letter", "causal_lm.chat_template=on"], "no chat template"),
        ("TINY", ["causal_lm.load_in=4bit"], "need a CUDA GPU"),
        ("CUT", [], "model.safetensors: truncated or corrupt weights ("),
    ],
)
def test_bad_llm_input_one_line_error(qfile, tiny_llm, tmp_path, cli, arg, sets, message):
    if arg == "BYTES":
        arg = "llm:" + str(build_tiny_llama(tmp_path / "bytes", [], vocab=259))
    elif arg == "NOCHAT":
        arg = "llm:" + str(build_tiny_llama(tmp_path / "nochat", WORDS, chat=False))
    elif arg == "TINY":
        arg = f"llm:{tiny_llm}"
    elif arg == "CUT":  # a copy cut short
        shutil.copytree(tiny_llm, tmp_path / "cut")
        cut_in_half(tmp_path / "cut" / "model.safetensors")
        arg = f"llm:{tmp_path / 'cut'}"
    out = tmp_path / "out"
    flags = [x for s in sets for x in ("--set", s)]
    result = cli(str(qfile), arg, "--out", str(out), *flags)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert not (out / "submission.csv").exists()


@pytest.mark.gpu
def test_llm_4bit_on_gpu_matches_fp32_ranking(qfile, tiny_llm, tmp_path):
    """bitsandbytes 4-bit + device_map: same top choice as fp32 on most questions."""
    a = run_infer(
        qfile, [f"llm:{tiny_llm}"], tmp_path / "a", make_config(*INFER_SMALL, "infer.device=cuda")
    )
    b = run_infer(
        qfile,
        [f"llm:{tiny_llm}"],
        tmp_path / "b",
        make_config(
            *INFER_SMALL, "infer.device=cuda", "causal_lm.load_in=4bit", "causal_lm.device_map=auto"
        ),
    )
    assert a["models"][0]["status"] == b["models"][0]["status"] == "done"


def test_adapter_fold_loads_its_base_then_the_adapter(qfile, tiny_llm, tmp_path):
    """What train saves over a 4/8-bit base: adapter files + base path in the meta."""
    from peft import LoraConfig, get_peft_model

    base = load_causal_lm(str(tiny_llm))
    lora = get_peft_model(
        base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    )
    fold = tmp_path / "run" / "fold_0"
    lora.save_pretrained(fold)
    load_causal_tokenizer(str(tiny_llm)).save_pretrained(fold)
    assert not (fold / "config.json").exists()
    tok = load_causal_tokenizer(str(fold))
    spec = PromptSpec.from_config(make_config(*INFER_SMALL).causal_lm, tok, "t")
    meta = {
        "format": "sciqa-mc/1",
        "family": "causal_lm",
        "prompt": spec.to_meta(),
        "adapter": True,
        "base": str(tiny_llm),
    }
    (fold / "sciqa_model.json").write_text(json.dumps(meta))
    (fold / "metrics.json").write_text("{}")
    run_infer(qfile, [str(fold.parent)], tmp_path / "a", make_config(*INFER_SMALL))
    run_infer(qfile, [f"llm:{tiny_llm}"], tmp_path / "b", make_config(*INFER_SMALL))
    merged = lora.merge_and_unload()
    from sciqa.io import read_questions

    enc = encode_for_llm(tok, read_questions(qfile), spec)
    expected = score_rows(
        merged.eval(), enc, list(range(len(enc))), ScoreHead.of(enc), tok.pad_token_id
    )
    np.testing.assert_allclose(
        load_logits(tmp_path / "a")["run-fold_0"], expected.numpy(), atol=1e-4
    )
    assert not np.allclose(
        load_logits(tmp_path / "a")["run-fold_0"], load_logits(tmp_path / "b")["llm-tiny"]
    )


def test_contexts_cut_to_the_window_are_counted_in_the_manifest(qfile, tiny_llm, tmp_path):
    result = run_infer(
        qfile,
        [f"llm:{tiny_llm}"],
        tmp_path / "out",
        make_config(*INFER_SMALL, "causal_lm.max_length=40"),
    )
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    cut = result["models"][0]["context_cut"]
    assert 0 < cut <= 10 and manifest["models"][0]["context_cut"] == cut


def test_one_llm_joins_twice_with_per_member_settings(qfile, tiny_llm, tmp_path):
    args = [f"llm:{tiny_llm}", f"llm:{tiny_llm}?normalise=pmi", f"llm:{tiny_llm}?mode=letter"]
    result = run_infer(
        qfile, args, tmp_path / "out", make_config(*INFER_SMALL, "infer.ensemble=zscore")
    )
    names = [m["model"] for m in result["models"]]
    assert names == ["llm-tiny", "llm-tiny-pmi", "llm-tiny-letter", "ensemble"]
    out = tmp_path / "out"
    single = run_infer(
        qfile,
        [f"llm:{tiny_llm}"],
        tmp_path / "pmi",
        make_config(*INFER_SMALL, "causal_lm.normalise=pmi"),
    )
    assert single["models"][0]["status"] == "done"
    np.testing.assert_allclose(
        load_logits(out)["llm-tiny-pmi"], load_logits(tmp_path / "pmi")["llm-tiny"], atol=1e-5
    )
    from infer.ensemble.combine import zscore

    expected = np.mean([zscore(load_logits(out)[n]) for n in names[:3]], axis=0)
    np.testing.assert_allclose(load_logits(out)["ensemble"], expected, atol=1e-3)  # near-flat rows


@pytest.mark.parametrize(
    ("suffix", "message"),
    [
        ("?colour=red", "not key=value with a causal_lm key"),
        ("?mode=essay", "causal_lm.mode: Input should be"),
    ],
)
def test_bad_member_override_is_one_line(qfile, tiny_llm, tmp_path, cli, suffix, message):
    result = cli(str(qfile), f"llm:{tiny_llm}{suffix}", "--out", str(tmp_path / "out"))
    assert result.exit_code == 1 and message in result.output, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
