"""causal_lm.offload = layers: the layer-streamed model scores as the resident one does.

Tiny random Llamas built in the test (tests/builders.py); the packaged SmolLM2 in
test_layer_stream_assets.py.
"""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from infer.commands import run_infer  # noqa: E402
from infer.predictors.offload import split as layer_split  # noqa: E402
from infer.predictors.offload.layout import layout_of  # noqa: E402
from infer.predictors.offload.predictor import streamed_scores  # noqa: E402
from infer.predictors.offload.stream import LayerStreamer, open_streamer  # noqa: E402
from sciqa.assets.llm import load_causal_lm, load_causal_tokenizer  # noqa: E402
from sciqa.metrics import top3_letters  # noqa: E402
from sciqa.scoring.llm_prompts import PromptSpec, encode_for_llm  # noqa: E402
from sciqa.scoring.llm_scoring import ScoreHead, score_rows  # noqa: E402
from tests.builders import (  # noqa: E402
    INFER_SMALL,
    WORDS,
    build_tiny_llama,
    load_logits,
    make_config,
    make_model,
    make_questions,
)


@pytest.fixture(scope="module")
def deep_llm(tiny_llm, tmp_path_factory) -> Path:
    """8 decoder layers, each bigger than the embedding: a model whose weights are
    mostly layers, like the 70B ones this mode is for."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("llm") / "deep"
    tok = load_causal_tokenizer(str(tiny_llm))
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=256, num_hidden_layers=8,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def streaming(tmp_path) -> tuple[str, ...]:
    """Config presets: INFER_SMALL, groups of 4 questions, layer splits in tmp_path/layers."""
    return (
        *INFER_SMALL,
        "causal_lm.offload_group=4",
        f"causal_lm.offload_dir={tmp_path / 'layers'}",
    )


def _same(streamed: np.ndarray, resident: np.ndarray) -> None:
    assert np.isfinite(streamed).all()
    assert float(np.abs(streamed - resident).max()) <= 1e-5
    assert top3_letters(streamed) == top3_letters(resident)


@pytest.mark.parametrize("context", [True, False])
@pytest.mark.parametrize("mode", ["cloze", "letter", "yes_no"])
def test_streamed_infer_equals_resident(qfile, tiny_llm, tmp_path, streaming, mode, context):
    sets = [f"causal_lm.mode={mode}", f"causal_lm.use_context={context}"]
    run_infer(qfile, [f"llm:{tiny_llm}"], tmp_path / "a", make_config(*streaming, *sets))
    streamed = run_infer(
        qfile, [f"llm:{tiny_llm}"], tmp_path / "b",
        make_config(*streaming, *sets, "causal_lm.offload=layers"),
    )  # fmt: skip
    assert streamed["models"][0]["status"] == "done"
    _same(load_logits(tmp_path / "b")["llm-tiny"], load_logits(tmp_path / "a")["llm-tiny"])
    assert len(list((tmp_path / "layers").glob("*/layer_*.safetensors"))) == 2


def test_one_streamed_copy_per_device(qfile, tiny_llm, tmp_path, streaming):
    """infer.devices gives each worker its own streamed copy of one split; ids reassemble."""
    run_infer(qfile, [f"llm:{tiny_llm}"], tmp_path / "a", make_config(*streaming))
    two = make_config(*streaming, "causal_lm.offload=layers", 'infer.devices=["cpu","cpu"]')
    streamed = run_infer(qfile, [f"llm:{tiny_llm}"], tmp_path / "b", two)
    assert streamed["models"][0]["status"] == "done"
    _same(load_logits(tmp_path / "b")["llm-tiny"], load_logits(tmp_path / "a")["llm-tiny"])
    assert len(list((tmp_path / "layers").glob("*/split.json"))) == 1


@pytest.mark.parametrize(
    ("sets", "cache"),
    [(["causal_lm.normalise=pmi"], True), (["causal_lm.normalise=sum"], False),
     (["causal_lm.mode=yes_no"], False), (["causal_lm.mode=letter"], False)],
)  # fmt: skip
def test_pmi_and_the_full_sequence_path_stream_too(tiny_llm, tmp_path, streaming, sets, cache):
    cfg = make_config(*streaming, *sets).causal_lm
    tok = load_causal_tokenizer(str(tiny_llm))
    enc = encode_for_llm(tok, make_questions(), PromptSpec.from_config(cfg, tok, "t"))
    rows, head = list(range(len(enc))), ScoreHead.of(enc)
    model = load_causal_lm(str(tiny_llm)).eval()
    expected = score_rows(model, enc, rows, head, tok.pad_token_id, prefix_cache=cache)
    streamer = open_streamer(tiny_llm, torch.device("cpu"), torch.float32, cfg, "sdpa")
    got = streamed_scores(streamer, enc, rows, head, tok.pad_token_id, 3, cache)
    streamer.close()
    _same(got.numpy(), expected.numpy())
    assert streamer.stats.sweeps == 1  # pmi's two halves share one pass over the weights


def test_member_override_tta_and_cascade(qfile, tiny_llm, tmp_path, streaming):
    """``llm:NAME?offload=layers`` as the cascade's expensive stage, with letter TTA."""
    mc = make_model(tmp_path / "bert", 3, meta=False)
    cascade = ["infer.cascade_fraction=0.5", "causal_lm.mode=letter"]

    def run(arg: str, name: str, out: str) -> dict:
        cfg = make_config(*streaming, *cascade, f"infer.cascade_expensive=[{name}]")
        cfg.infer.tta = 3
        return run_infer(qfile, [arg, str(mc)], tmp_path / out, cfg)

    run(f"llm:{tiny_llm}", "llm-tiny", "a")
    name = "llm-tiny-layers-false"
    streamed = run(f"llm:{tiny_llm}?offload=layers&offload_prefetch=false", name, "b")
    assert streamed["cascade"]["expensive"] == [name] and streamed["cascade"]["escalated"] == 5
    a, b = load_logits(tmp_path / "a")["llm-tiny"], load_logits(tmp_path / "b")[name]
    assert (np.isnan(a) == np.isnan(b)).all() and (~np.isnan(b).any(axis=1)).sum() == 5
    rows = ~np.isnan(b).any(axis=1)
    _same(b[rows], a[rows])


def test_sharded_and_bin_checkpoints_split_alike(tiny_llm, tmp_path, streaming):
    model = load_causal_lm(str(tiny_llm))
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    torch.save(model.state_dict(), tmp_path / "sharded" / "ignored.pt")  # not a weight source
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(tiny_llm / "config.json", bin_dir)
    torch.save({k: v for k, v in model.state_dict().items() if k != "lm_head.weight"},
               bin_dir / "pytorch_model.bin")  # fmt: skip
    cfg = make_config(*streaming).causal_lm
    tok = load_causal_tokenizer(str(tiny_llm))
    enc = encode_for_llm(tok, make_questions(), PromptSpec.from_config(cfg, tok, "t"))
    rows, head = list(range(len(enc))), ScoreHead.of(enc)
    expected = score_rows(model.eval(), enc, rows, head, tok.pad_token_id)
    for folder in (tiny_llm, tmp_path / "sharded", bin_dir):
        streamer = open_streamer(folder, torch.device("cpu"), torch.float32, cfg, "sdpa")
        _same(streamed_scores(streamer, enc, rows, head, tok.pad_token_id, 3, True).numpy(),
              expected.numpy())  # fmt: skip
        streamer.close()


def _weights_census(shapes: set[tuple]) -> int:
    """Bytes of every live tensor in this process shaped like a weight of the model,
    wherever it is held (modules, the prefetch buffer, or a leak), each storage once."""
    seen, total = set(), 0
    for obj in gc.get_objects():
        if not isinstance(obj, torch.Tensor) or obj.device.type == "meta":
            continue
        if (tuple(obj.shape), obj.dtype) in shapes and obj.data_ptr() not in seen:
            seen.add(obj.data_ptr())
            total += obj.numel() * obj.element_size()
    return total


@pytest.mark.parametrize("prefetch", [True, False])
def test_weights_held_at_once_stay_under_a_cap_the_model_exceeds(
    deep_llm, tmp_path, streaming, prefetch
):
    sets = [f"causal_lm.offload_prefetch={prefetch}", "causal_lm.offload_group=100"]
    cfg = make_config(*streaming, *sets).causal_lm
    tok = load_causal_tokenizer(str(deep_llm))
    enc = encode_for_llm(tok, make_questions(), PromptSpec.from_config(cfg, tok, "t"))
    rows, head = list(range(len(enc))), ScoreHead.of(enc)
    model = load_causal_lm(str(deep_llm)).eval()
    expected = score_rows(model, enc, rows, head, tok.pad_token_id).numpy()
    shapes = {(tuple(p.shape), p.dtype) for p in model.parameters()}
    full = sum(p.numel() * p.element_size() for p in model.parameters())
    biggest = max(p.numel() * p.element_size() for p in model.parameters())
    layer = sum(p.numel() * p.element_size() for p in model.model.layers[0].parameters())
    del model
    gc.collect()
    assert _weights_census(shapes) == 0

    streamer = open_streamer(deep_llm, torch.device("cpu"), torch.float32, cfg, "sdpa")
    largest = max(streamer.split.sizes)
    # This part (+ the next one being read, + the one tensor being copied as it is read).
    cap = (2 if prefetch else 1) * largest + biggest
    assert cap < full / 3  # the whole model would not fit under the cap
    seen: dict[int, int] = {}  # one census per module, as it first runs (one sweep)

    def census(module, _args) -> None:
        if id(module) not in seen:
            seen[id(module)] = _weights_census(shapes)

    for module in [streamer.embed, *streamer.layers, streamer.head]:
        module.register_forward_pre_hook(census)
    got = streamed_scores(streamer, enc, rows, head, tok.pad_token_id, 3, True).numpy()
    streamer.close()
    _same(got, expected)
    assert streamer.stats.sweeps == 1 and len(seen) == 10
    assert max(seen.values()) <= cap, (seen, cap, full)
    assert min(seen.values()) >= layer / 3  # the census does see the part that runs
    assert streamer.stats.peak_weight_bytes <= cap
    del streamer
    gc.collect()
    assert _weights_census(shapes) == 0  # nothing left behind


def test_split_is_reused_by_content_and_written_once(tiny_llm, tmp_path, streaming, capsys):
    cfg = make_config(*streaming).causal_lm
    open_streamer(tiny_llm, torch.device("cpu"), torch.float32, cfg, "sdpa").close()
    assert "splitting" in capsys.readouterr().err
    (split_dir,) = (tmp_path / "layers").iterdir()
    manifest = json.loads((split_dir / "split.json").read_text())
    assert [p["name"] for p in manifest["parts"]] == ["embed", "layer_00000", "layer_00001", "head"]
    assert (split_dir / "tokenizer.json").is_file() and (split_dir / "config.json").is_file()
    moved = shutil.copytree(tiny_llm, tmp_path / "copy")  # same content, another path
    open_streamer(moved, torch.device("cpu"), torch.float32, cfg, "sdpa").close()
    assert "splitting" not in capsys.readouterr().err
    assert list((tmp_path / "layers").iterdir()) == [split_dir]
    other = build_tiny_llama(tmp_path / "other", [" ".join(WORDS)] * 3, seed=5)
    open_streamer(other, torch.device("cpu"), torch.float32, cfg, "sdpa").close()
    assert len(list((tmp_path / "layers").iterdir())) == 2  # other weights: another split


def test_interrupted_split_never_loads_and_a_rerun_resumes(
    tiny_llm, tmp_path, streaming, monkeypatch
):
    import safetensors.torch

    real, written = safetensors.torch.save_file, []

    def dies_on_third(tensors, filename, metadata=None):
        if len(written) == 2:
            Path(filename).write_bytes(b"half a file")  # killed mid-write
            raise KeyboardInterrupt
        written.append(Path(filename).name)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", dies_on_third)
    cfg = make_config(*streaming).causal_lm
    with pytest.raises(KeyboardInterrupt):
        open_streamer(tiny_llm, torch.device("cpu"), torch.float32, cfg, "sdpa")
    (split_dir,) = (tmp_path / "layers").iterdir()
    assert not (split_dir / "split.json").exists() and not layer_split.is_split(split_dir)
    assert sorted(p.name for p in split_dir.glob("[!.]*")) == [
        "embed.safetensors", "layer_00000.safetensors"
    ]  # fmt: skip
    assert not list(split_dir.glob(".*.tmp"))
    (split_dir / ".layer_00001.safetensors.tmp").write_bytes(b"left by kill -9")

    written.clear()
    monkeypatch.setattr(safetensors.torch, "save_file", lambda *a, **k: (
        written.append(Path(a[1]).name), real(*a, **k))[1])  # fmt: skip
    streamer = open_streamer(tiny_llm, torch.device("cpu"), torch.float32, cfg, "sdpa")
    streamer.close()
    assert len(written) == 2  # only the parts the first run did not finish
    assert not list(split_dir.glob(".*.tmp")) and layer_split.is_split(split_dir)

    # A part damaged later (disk trouble) is found by size and rewritten alone.
    (split_dir / "head.safetensors").write_bytes(b"broken")
    written.clear()
    open_streamer(tiny_llm, torch.device("cpu"), torch.float32, cfg, "sdpa").close()
    assert written == [".head.safetensors.tmp"]


def test_two_processes_splitting_at_once_write_it_once(tiny_llm, tmp_path, monkeypatch):
    import threading

    import safetensors.torch

    real, written = safetensors.torch.save_file, []

    def slow_save(tensors, filename, metadata=None):
        written.append(Path(filename).name)
        threading.Event().wait(0.05)  # long enough for the other to arrive mid-split
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", slow_save)
    parts, tied = layout_of(tiny_llm)
    splits = []

    def split() -> None:
        splits.append(layer_split.ensure_split(tiny_llm, parts, "fp32", tmp_path / "l", tied))

    threads = [threading.Thread(target=split) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(splits) == 2 and splits[0] == splits[1]
    assert len(written) == len(parts)  # every part once: the second waited, then reused


def test_a_split_folder_is_a_model_of_its_own(qfile, tiny_llm, tmp_path, streaming):
    cfg = make_config(*streaming, "causal_lm.offload=layers")
    run_infer(qfile, [f"llm:{tiny_llm}"], tmp_path / "a", cfg)
    (split_dir,) = (tmp_path / "layers").iterdir()
    copied = shutil.copytree(split_dir, tmp_path / "offline" / "tiny-layers")
    shutil.rmtree(tmp_path / "layers")
    run_infer(qfile, [f"llm:{copied}"], tmp_path / "b", cfg)
    assert not (tmp_path / "layers").exists()  # used where it is, not split again
    _same(load_logits(tmp_path / "b")["llm-tiny-layers"], load_logits(tmp_path / "a")["llm-tiny"])


def test_time_budget_plans_a_streamed_member_from_its_first_group(
    qfile, tiny_llm, tmp_path, streaming, monkeypatch
):
    """Time passes only in sweeps: the budget fits two of three TTA passes."""
    clock = {"now": 0.0}
    real = LayerStreamer.run

    def timed(self, jobs):
        clock["now"] += 1.0 + 0.01 * sum(j.first["input_ids"].numel() for j in jobs)
        return real(self, jobs)

    monkeypatch.setattr(LayerStreamer, "run", timed)
    cfg = make_config(*streaming, "causal_lm.offload=layers", "causal_lm.mode=letter",
                  "causal_lm.offload_group=100", "infer.budget_margin=0")  # fmt: skip
    one = run_infer(qfile, [f"llm:{tiny_llm}"], tmp_path / "one", cfg, clock=lambda: clock["now"])
    per_pass = one["models"][0]["seconds"]
    clock["now"] = 0.0
    cfg.infer.tta = 3
    cfg.infer.time_budget = f"{2.5 * per_pass:.3f}s"
    result = run_infer(
        qfile, [f"llm:{tiny_llm}"], tmp_path / "out", cfg, clock=lambda: clock["now"],
    )  # fmt: skip
    assert result["models"][0]["passes"] == 2 and result["plans"]


def _other_family(folder: Path, tiny_llm: Path, family: str) -> Path:
    import transformers

    tok = load_causal_tokenizer(str(tiny_llm))
    if family == "GPT2":
        config = transformers.GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2)
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.GemmaConfig(
            vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=1, head_dim=8,
        )  # fmt: skip
        model = transformers.GemmaForCausalLM(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("model", "sets", "message"),
    [
        ("GPT2", [], "cannot locate the decoder layers of GPT2LMHeadModel (model_type 'gpt2')"),
        ("GEMMA", [], "GemmaForCausalLM (model_type 'gemma') is not a family it streams"),
        ("TINY", ["causal_lm.offload_dir=FILE/layers"], "is not writable (Not a directory)"),
        ("TINY", ["causal_lm.load_in=8bit"], "causal_lm.load_in: causal_lm.offload = layers"),
        ("TINY", ["causal_lm.offload=disk"], "causal_lm.offload: Input should be"),
    ],
)
def test_bad_streaming_input_is_one_line(qfile, tiny_llm, tmp_path, cli, model, sets, message):
    (tmp_path / "FILE").write_text("a file, not a folder")
    folder = tiny_llm if model == "TINY" else _other_family(tmp_path / model, tiny_llm, model)
    flags = ["--set", "causal_lm.offload=layers", "--set", f"causal_lm.offload_dir={tmp_path}/x"]
    for s in sets:
        flags += ["--set", s.replace("FILE", str(tmp_path / "FILE"))]
    out = tmp_path / "out"
    result = cli(str(qfile), f"llm:{folder}", "--out", str(out), *flags)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert not (out / "submission.csv").exists()


def test_an_error_mid_sweep_leaves_no_weights_behind(tiny_llm, tmp_path, streaming):
    from infer.predictors.offload.stream import Job
    from sciqa.scoring.llm_scoring import prefix_inputs

    cfg = make_config(*streaming).causal_lm
    tok = load_causal_tokenizer(str(tiny_llm))
    enc = encode_for_llm(tok, make_questions(), PromptSpec.from_config(cfg, tok, "t"))
    streamer = open_streamer(tiny_llm, torch.device("cpu"), torch.float32, cfg, "sdpa")

    def fails(*_):
        raise RuntimeError("scoring failed")

    with pytest.raises(RuntimeError, match="scoring failed"):
        streamer.run([Job(prefix_inputs(enc, [0, 1], tok.pad_token_id, "cpu"), 1, fails)])
    assert streamer.held_bytes() == 0 and streamer._pending is None
    streamer.close()
