"""benchmarks/gpu_check.py: its CPU smoke run (every row, finite numbers), its time boxes,
and the GPU recipes it runs loading with the current config schema."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from operator import attrgetter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(ROOT))

from benchmarks import gpu_check  # noqa: E402
from benchmarks.gpu_check_models import DEBERTA_V3_LARGE, GPU, SMOKE  # noqa: E402
from sciqa.config import load_config  # noqa: E402

TRAIN_CONFIG = ROOT / "configs" / "train_deberta_v3_large_gpu.yaml"
INFER_CONFIG = ROOT / "configs" / "infer_kaggle.toml"
ALL_ROWS = [name for names in gpu_check.ROWS.values() for name in names]


def test_gpu_recipes_load_with_the_current_schema():
    train = load_config(TRAIN_CONFIG).train
    assert (train.max_length, train.batch_size, train.grad_accum) == (512, 2, 8)
    assert train.precision == "auto" and train.gradient_checkpointing
    assert train.freeze_embeddings and train.freeze_layers == 18
    assert train.freeze_layers < DEBERTA_V3_LARGE["num_hidden_layers"]
    infer = load_config(INFER_CONFIG).infer
    assert (infer.device, infer.dtype, infer.batch_size, infer.tta) == ("cuda", "auto", 4, 2)
    assert infer.max_length == 512 and infer.time_budget == "8h30m"


@pytest.mark.parametrize("sizes", [GPU, SMOKE], ids=["gpu", "smoke"])
def test_the_overrides_the_check_applies_are_valid_keys(sizes):
    overrides = ["infer.weights=equal", "train.epochs=1", *sizes.overrides]
    for path in (TRAIN_CONFIG, INFER_CONFIG):
        config = load_config(path, overrides)  # an unknown key or bad value raises
        for override in overrides:  # and each one wins over the recipe file
            key = override.split("=")[0]
            alone = attrgetter(key)(load_config(None, [override]))
            assert attrgetter(key)(config) == alone, (path.name, override)


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"smoke": True, "llm": "tiny", "deadline": 600.0, **kw})


def test_a_step_past_its_time_box_is_killed_and_reported(tmp_path):
    (tmp_path / "logs").mkdir()
    began = time.monotonic()
    outcome = gpu_check.run_one("build_mc", 0.5, tmp_path, _args())
    assert outcome["status"].startswith("timed out after")
    assert time.monotonic() - began < 10  # killed, not waited for
    assert not (tmp_path / "results" / "build_mc.json").exists()


def test_no_time_left_skips_steps_and_their_dependents_but_keeps_every_row(tmp_path):
    report = gpu_check.run_all(_args(deadline=1.0), tmp_path / "work", tmp_path / "out")
    assert list(report["rows"]) == ALL_ROWS
    assert report["steps"]["build_mc"]["status"] == "skipped: no time left"
    assert report["steps"]["train_bf16"]["status"] == "skipped: build_mc did not finish"
    table = (tmp_path / "out" / "table.md").read_text()
    assert "0 of 12 checks ok." in table
    assert "| train MC fp16 | - |" in table


@pytest.mark.slow
def test_smoke_run_fills_every_row_with_finite_numbers(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--deadline", "1200"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1320, cwd=ROOT)
    logs = (out / "logs.txt").read_text() if (out / "logs.txt").exists() else ""
    assert done.returncode == 0, done.stdout[-3000:] + logs[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert list(report["rows"]) == ALL_ROWS
    for name, row in report["rows"].items():
        assert row["status"] == "ok", (name, row)
        assert math.isfinite(row["figure"]), (name, row)
        assert row["figure"] >= 0, (name, row)
    rows = report["rows"]
    assert rows["infer MC fp16 overflow"]["figure"] == 1  # overflowed once, then fp32
    assert "world size 1" in rows["torchrun start-up"]["detail"]
    assert 0 <= rows["MC bf16 vs fp32 top-1"]["figure"] <= 100
    table = done.stdout[done.stdout.index("| check |") :]
    for name in ALL_ROWS:  # one printed table holds every row, with a number
        line = next(x for x in table.splitlines() if x.startswith(f"| {name} |"))
        assert line.split("|")[2].strip() != "-", line
    assert "12 of 12 checks ok." in done.stdout


def test_module_examples():
    import doctest

    from benchmarks import gpu_check_models, gpu_check_probes

    for module in (gpu_check_models, gpu_check_probes):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, (module.__name__, result)


def test_scaler_watch_injects_one_overflow_that_the_loss_scaler_skips():
    torch = pytest.importorskip("torch")
    from benchmarks.gpu_check_probes import scaler_watch

    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    before = model.weight.detach().clone()
    originals = (torch.amp.GradScaler.update, torch.amp.GradScaler.unscale_)
    with scaler_watch() as stats:
        for step in range(2):
            optimizer.zero_grad()
            scaler.scale(model(torch.ones(2, 3)).sum()).backward()
            scaler.unscale_(optimizer)  # as accelerate's gradient clipping does
            scaler.step(optimizer)
            scaler.update()
            if step == 0:  # the injected inf: step skipped, scale halved
                assert torch.equal(model.weight, before) and scaler.get_scale() == 512.0
    assert stats == {"steps": 2, "skipped": 1, "injected": 1}
    assert not torch.equal(model.weight, before)  # the second step trained
    restored = (torch.amp.GradScaler.update, torch.amp.GradScaler.unscale_)
    assert all(a is b for a, b in zip(restored, originals, strict=True))  # restored afterwards


def test_the_gpu_models_have_the_production_shapes():
    """Built on the meta device (no memory): DeBERTa-v3-large's 435M parameters (304M in
    the layers + 131M in the 128,100 x 1024 embeddings) and Llama-2-7B's 6.74B."""
    pytest.importorskip("transformers")
    from benchmarks.gpu_check_models import (
        causal_tokenizer,
        llm_model,
        mc_model,
        n_params,
        pseudo_words,
    )

    assert 430e6 < n_params(mc_model(GPU, 0, "meta")) < 440e6
    tokenizer = causal_tokenizer(pseudo_words(50), 400)
    assert 6.7e9 < n_params(llm_model("7b", tokenizer, "meta")) < 6.8e9
