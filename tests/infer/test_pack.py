"""sciqa pack: bundle layout, config, manifest, wheels resolution and every bad input.

These tests use a metadata-only sciqa wheel (they never install it) and a local folder of
tiny wheels as the package index; tests/infer/test_pack_offline.py installs a real bundle.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("transformers")

from infer.commands import run_infer
from infer.pack.bundle import toml_text
from sciqa.cli import app
from sciqa.config import load_config
from sciqa.io import write_questions
from sciqa.outdir import OutLock
from sciqa.runs import file_digest
from tests.builders import WORDS, build_tiny_llama, make_questions, make_run

CORE = ["numpy>=1.26", "pandas>=2.1", "pyarrow>=14", "pydantic>=2.6", "pyyaml>=6", "typer>=0.12"]


def write_wheel(
    folder: Path,
    name: str,
    version: str,
    requires: list[str] = (),
    tag: str = "py3-none-any",
    requires_python: str | None = None,
) -> Path:
    """A minimal valid wheel: one module, METADATA, WHEEL and RECORD."""
    folder.mkdir(parents=True, exist_ok=True)
    module = name.replace("-", "_")
    dist = f"{module}-{version}.dist-info"
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    meta += [f"Requires-Python: {requires_python}"] if requires_python else []
    meta += [f"Requires-Dist: {r}" for r in requires]
    files = {
        f"{module}/__init__.py": "",
        f"{dist}/METADATA": "\n".join(meta) + "\n",
        f"{dist}/WHEEL": f"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: {tag}\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    wheel = folder / f"{module}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


@pytest.fixture(scope="module")
def sciqa_wheel(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sciqa_wheel")
    return write_wheel(folder, "sciqa", "0.1.0", CORE, requires_python=">=3.11")


@pytest.fixture
def run_a(tmp_path) -> Path:
    run = make_run(tmp_path / "run_a", 1)
    fold = run / "fold_0"
    (fold / "optimizer.pt").write_bytes(b"0" * 64)  # training leftovers pack must drop
    (fold / "rng_state.pth").write_bytes(b"0" * 8)
    (fold / "pytorch_model.bin").write_bytes(b"0" * 64)  # covered by model.safetensors
    (fold / "checkpoint-5").mkdir()
    (fold / "checkpoint-5" / "model.safetensors").write_bytes(b"0" * 64)
    (fold / "logits.npy").write_bytes(b"0" * 64)
    (fold / "oof.parquet").write_bytes((run / "oof.parquet").read_bytes())  # as train writes
    return run


@pytest.fixture
def qfile(tmp_path) -> Path:
    return write_questions(make_questions(), tmp_path / "questions.csv")


def pack(*args: str, wheel: Path, expect: int = 0):
    result = CliRunner().invoke(
        app, ["pack", *args, "--set", f"pack.sciqa_wheel={wheel}", "--set", "infer.batch_size=3"]
    )
    assert result.exit_code == expect, result.output
    return result


def bundle_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


FOLD = ["config.json", "metrics.json", "model.safetensors", "sciqa_model.json"]
FOLD += ["tokenizer.json", "tokenizer_config.json", "vocab.txt"]


def test_bundle_holds_what_infer_loads(run_a, tmp_path, sciqa_wheel):
    out = tmp_path / "bundle"
    pack(str(run_a), "--out", str(out), wheel=sciqa_wheel)
    expected = {f"models/run_a/fold_{i}/{name}" for i in (0, 1) for name in FOLD}
    expected |= {"models/run_a/oof.parquet", "wheels/sciqa-0.1.0-py3-none-any.whl"}
    expected |= {"config.toml", "manifest.json", "predict.sh"}
    assert bundle_files(out) == expected
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "sciqa-bundle/1"
    assert {f["path"] for f in manifest["files"]} == expected - {"manifest.json"}
    for entry in manifest["files"]:
        file = out / entry["path"]
        assert entry["bytes"] == file.stat().st_size
        assert entry["sha256"] == file_digest(file)
    rows = manifest["members"]
    assert [m["name"] for m in rows] == ["run_a-fold_0", "run_a-fold_1"]
    assert [m["bundled"] for m in rows] == ["models/run_a/fold_0", "models/run_a/fold_1"]
    assert [m["weight"] for m in rows] == [1.0, 1.0]
    assert set(rows[0]["left_out"]) == {
        *("optimizer.pt", "rng_state.pth", "pytorch_model.bin", "checkpoint-5/", "logits.npy"),
        "oof.parquet",
    }
    wheels = manifest["wheels"]
    assert wheels["files"] == ["sciqa-0.1.0-py3-none-any.whl"]
    assert wheels["install"] == ["sciqa==0.1.0"]
    assert {"torch", "transformers", "numpy", "typer"} <= set(wheels["left_out"])
    assert manifest["sciqa"]["version"] == "0.1.0"
    # The bundled config is the resolved one; predict.sh runs the members in order.
    assert load_config(out / "config.toml").infer == load_config(None, ["infer.batch_size=3"]).infer
    script = (out / "predict.sh").read_text()
    assert os.access(out / "predict.sh", os.X_OK)
    assert script.index("models/run_a/fold_0") < script.index("models/run_a/fold_1")
    assert not list(tmp_path.glob(".bundle.*"))  # no temporary folder left beside OUT


def test_bundle_infers_like_the_originals(run_a, tmp_path, sciqa_wheel, qfile, monkeypatch):
    """From the bundle root, with its config.toml: llm: settings, a shared LLM folder,
    the cascade's named member and the weights all carry over; same submission."""
    llm = build_tiny_llama(tmp_path / "tiny", [" ".join(WORDS)] * 3)
    run_b = make_run(tmp_path / "run_b", 2)
    args = [str(run_a), str(run_b / "fold_1"), f"llm:{llm}?normalise=chars", f"llm:{llm}"]
    config = tmp_path / "pack.toml"
    config.write_text(
        toml_text(
            {
                "infer": {
                    "batch_size": 3,
                    "weights": "1,1,2,1,1",
                    "cascade_expensive": [f"llm:{llm}?normalise=chars"],
                    "cascade_fraction": 0.5,
                },
                "causal_lm": {"batch_size": 3},
            }
        )
    )
    out = tmp_path / "bundle"
    pack(*args, "--out", str(out), "-c", str(config), wheel=sciqa_wheel)
    manifest = json.loads((out / "manifest.json").read_text())
    bundle_args = [m["bundled"] for m in manifest["members"]]
    assert bundle_args == [
        "models/run_a/fold_0",
        "models/run_a/fold_1",
        "models/run_b/fold_1",
        "llm:models/tiny?normalise=chars",
        "llm:models/tiny",
    ]
    assert [m["weight"] for m in manifest["members"]] == [1, 1, 2, 1, 1]
    assert sum(p.startswith("models/tiny/") for p in bundle_files(out)) == len(
        [p for p in llm.iterdir() if p.is_file()]
    )  # one copy for both members
    bundled = load_config(out / "config.toml")
    assert bundled.infer.cascade_expensive == ["llm:models/tiny?normalise=chars"]

    reference = run_infer(qfile, args, tmp_path / "ref", load_config(config))
    monkeypatch.chdir(out)
    result = run_infer(qfile, bundle_args, tmp_path / "got", bundled)
    assert result["cascade"]["expensive"] == ["llm-tiny-chars"]
    assert [m["model"] for m in result["models"]] == [m["model"] for m in reference["models"]]
    got = (tmp_path / "got" / "submission.csv").read_bytes()
    assert got == (tmp_path / "ref" / "submission.csv").read_bytes()


def test_adapter_fold_brings_its_base(tmp_path, sciqa_wheel, qfile, monkeypatch):
    """A LoRA fold names its base by path; the bundle holds the base and names it."""
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model

    from sciqa.assets.llm import load_causal_lm, load_causal_tokenizer

    base = build_tiny_llama(tmp_path / "base_llm", [" ".join(WORDS)] * 3)
    lora = get_peft_model(
        load_causal_lm(str(base)),
        LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False),
    )
    fold = tmp_path / "run" / "fold_0"
    lora.save_pretrained(fold)
    load_causal_tokenizer(str(base)).save_pretrained(fold)
    meta = {"format": "sciqa-mc/1", "family": "causal_lm", "adapter": True, "base": str(base)}
    (fold / "sciqa_model.json").write_text(json.dumps(meta))
    (fold / "metrics.json").write_text("{}")
    out = tmp_path / "bundle"
    pack(str(fold), "--out", str(out), "--set", "causal_lm.batch_size=3", wheel=sciqa_wheel)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["members"][0]["base"] == "models/bases/base_llm"
    assert "peft>=0.12" in manifest["wheels"]["left_out"]["peft"][0]  # the target has peft
    bundled_meta = json.loads((out / "models" / "fold_0" / "sciqa_model.json").read_text())
    assert bundled_meta["base"] == "models/bases/base_llm"
    assert (out / "models" / "bases" / "base_llm" / "model.safetensors").is_file()

    cfg = load_config(None, ["infer.batch_size=3", "causal_lm.batch_size=3"])
    run_infer(qfile, [str(fold)], tmp_path / "ref", cfg)
    monkeypatch.chdir(out)
    run_infer(qfile, ["models/fold_0"], tmp_path / "got", load_config(out / "config.toml"))
    got = (tmp_path / "got" / "submission.csv").read_bytes()
    assert got == (tmp_path / "ref" / "submission.csv").read_bytes()


@pytest.mark.parametrize("method", ["auto", "stack"])
def test_fitted_weights_are_fitted_at_pack_time(run_a, tmp_path, sciqa_wheel, method):
    run_b = make_run(tmp_path / "run_b", 2)
    out = tmp_path / "bundle"
    labels = write_questions(make_questions(12, seed=99), tmp_path / "train.csv")
    args = [str(run_a), str(run_b), "--out", str(out), "--weights", method]
    pack(*args, "--set", f"infer.oof_labels={labels}", wheel=sciqa_wheel)
    manifest = json.loads((out / "manifest.json").read_text())
    assert load_config(out / "config.toml").infer.oof_labels == "models/oof_labels.csv"
    assert (out / "models" / "oof_labels.csv").read_bytes() == labels.read_bytes()
    assert manifest["weights"]["setting"] == method
    assert load_config(out / "config.toml").infer.weights == method  # the target refits
    assert sum(manifest["weights"]["values"]) == pytest.approx(1.0)
    assert manifest["weights"]["fit"]["oof_questions"] == 12
    assert {"models/run_a/oof.parquet", "models/run_b/oof.parquet"} <= bundle_files(out)


def test_overwrite_replaces_only_a_bundle(run_a, tmp_path, sciqa_wheel):
    out = tmp_path / "bundle"
    pack(str(run_a / "fold_0"), "--out", str(out), wheel=sciqa_wheel)
    result = pack(str(run_a), "--out", str(out), wheel=sciqa_wheel, expect=1)
    assert "already a bundle; pass --overwrite" in result.output
    assert len(json.loads((out / "manifest.json").read_text())["members"]) == 1
    pack(str(run_a), "--out", str(out), "--overwrite", wheel=sciqa_wheel)
    assert len(json.loads((out / "manifest.json").read_text())["members"]) == 2
    assert not list(tmp_path.glob(".bundle.*"))


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda t, r: [str(t / "nope")], "no such model directory"),
        (lambda t, r: [str(t / "nope*")], "the glob matches nothing"),
        (lambda t, r: [str(r), "--out", str(t / "file.txt")], "exists and is not a folder"),
        (lambda t, r: [str(r), "--out", str(t / "other")], "exists and is not a sciqa bundle"),
        (lambda t, r: [str(r), "--out", str(t / "no" / "b")], "does not exist"),
        (lambda t, r: [str(r), "--python", "3.10"], "requires Python >=3.11"),
        (lambda t, r: [str(r), "--python", "three"], "pack.python"),
        (lambda t, r: [str(r), "--weights", "1,2,3"], "3 weight(s) for 2 model(s)"),
        (lambda t, r: [str(r), "--time-budget", "soon"], "soon"),
        (lambda t, r: ["llm:/no/such.gguf"], "no such file or directory"),
        (lambda t, r: ["llm:nobody/not-cached"], "not in the local Hugging Face cache"),
        (lambda t, r: [str(r), "--set", "infer.oof_labels=/no/labels.csv"], "no such file"),
    ],
)
def test_bad_input_one_line_error_nothing_written(tmp_path, run_a, sciqa_wheel, make_args, message):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    args = make_args(tmp_path, run_a)
    if "--out" not in args:
        args += ["--out", str(tmp_path / "bundle")]
    result = pack(*args, wheel=sciqa_wheel, expect=1)
    assert result.output.startswith("error: ") and message in result.output
    assert result.output.count("\n") == 1, result.output  # nothing else was done
    assert not (tmp_path / "bundle").exists()
    assert not list(tmp_path.rglob(".*"))  # no partial folder, no lock file
    assert (tmp_path / "other" / "keep.txt").read_text() == "mine"


def test_a_killed_packs_leftover_is_cleared_and_modes_follow_the_umask(
    run_a, tmp_path, sciqa_wheel
):
    out = tmp_path / "bundle"
    leftover = tmp_path / ".bundle.partial"  # what a pack killed mid-copy leaves
    (leftover / "models").mkdir(parents=True)
    (leftover / "models" / "half.safetensors").write_bytes(b"0" * 10)
    (run_a / "fold_0" / "model.safetensors").chmod(0o644)
    umask = os.umask(0o022)
    try:
        pack(str(run_a / "fold_0"), "--out", str(out), wheel=sciqa_wheel)
    finally:
        os.umask(umask)
    assert not leftover.exists() and not list(tmp_path.glob(".bundle.*"))
    assert "models/half.safetensors" not in bundle_files(out)
    modes = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777 for p in out.rglob("*")}
    assert modes.pop("predict.sh") == 0o755
    assert modes["models/run_a/fold_0/model.safetensors"] == 0o644
    assert set(modes.values()) == {0o644, 0o755}  # folders 0755, files 0644
    assert {m for p, m in modes.items() if (out / p).is_file()} == {0o644}


def test_a_second_pack_into_the_same_bundle_is_refused_naming_the_first(
    run_a, tmp_path, sciqa_wheel
):
    out = tmp_path / "bundle"
    with OutLock(out, command="sciqa pack runs/a --out bundle"):
        result = pack(str(run_a), "--out", str(out), wheel=sciqa_wheel, expect=1)
    assert result.output.startswith(f"error: {out}: another sciqa run is writing it (pid ")
    assert "`sciqa pack runs/a --out bundle`" in result.output
    assert result.output.count("\n") == 1 and not out.exists()


@pytest.mark.parametrize(
    "text", ["plain", 'quote " and \\ backslash', "tab\tnew\nline", "\x7f\x01 unicode é ✓"]
)
def test_toml_strings_read_back(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(toml_text({"infer": {"time_budget": None, "cascade_expensive": [text]}}))
    assert load_config(path).infer.cascade_expensive == [text]


# --- wheels: a local folder stands in for the package index -----------------------


@pytest.fixture
def index(tmp_path, monkeypatch) -> Path:
    """dep-a -> dep-b + heavy -> heavy-sub, and natpkg with only a Linux x86-64 wheel."""
    folder = tmp_path / "index"
    write_wheel(folder, "dep-a", "1.0", ["dep-b>=1", "heavy", "never; extra == 'gui'"])
    write_wheel(folder, "dep-b", "1.2")
    write_wheel(folder, "heavy", "2.0", ["heavy-sub"])
    write_wheel(folder, "heavy-sub", "1.0")
    write_wheel(folder, "natpkg", "0.3", tag="cp312-cp312-manylinux_2_17_x86_64")
    # Only this folder: not the machine's pip configuration or indexes.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for var in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT"):
        monkeypatch.delenv(var, raising=False)
    return folder


def _index_args(index: Path, *requirements: str) -> list[str]:
    pip_args = json.dumps(["--no-index", "--find-links", str(index)])
    return [
        "--set",
        f"pack.pip_args={pip_args}",
        "--set",
        f"pack.requirements={list(requirements)}",
    ]


def test_wheels_leave_out_what_the_target_has(run_a, tmp_path, sciqa_wheel, index):
    out = tmp_path / "bundle"
    excluded = ["torch", "transformers", "heavy", *(r.split(">")[0] for r in CORE)]
    args = [str(run_a), "--out", str(out), *_index_args(index, "dep-a", "natpkg")]
    pack(*args, "--set", f"pack.exclude={json.dumps(excluded)}", wheel=sciqa_wheel)
    manifest = json.loads((out / "manifest.json").read_text())
    wheels = manifest["wheels"]
    assert wheels["bundled"] == {"dep-a": "1.0", "dep-b": "1.2", "natpkg": "0.3"}
    assert sorted(p.name.split("-")[0] for p in (out / "wheels").iterdir()) == [
        "dep_a", "dep_b", "natpkg", "sciqa"
    ]  # fmt: skip
    assert wheels["left_out"]["heavy"] == ["heavy (dep-a)"]
    assert "heavy-sub" not in wheels["left_out"]  # only heavy needs it, and the target has heavy
    assert wheels["install"] == ["sciqa==0.1.0", "dep-a", "natpkg"]
    assert "manylinux_2_17_x86_64" in wheels["platforms"]  # 2_35 runs older manylinux wheels
    assert (
        '--find-links "$BUNDLE/wheels" sciqa==0.1.0 dep-a natpkg'
        in (out / "predict.sh").read_text()
    )


def test_a_platform_pip_cannot_serve_names_the_package(run_a, tmp_path, sciqa_wheel, index):
    out = tmp_path / "bundle"
    args = [str(run_a), "--out", str(out), "--platform", "win_amd64"]
    result = pack(*args, *_index_args(index, "dep-a", "natpkg"), wheel=sciqa_wheel, expect=1)
    last = result.output.splitlines()[-1]  # after the progress lines
    assert last.startswith("error: pip cannot get natpkg for Python 3.12 on win_amd64: ")
    assert not out.exists() and not list(tmp_path.glob(".bundle.*"))


# --- predict.sh checks the bundle before anything else ----------------------------


@pytest.fixture
def bundle(run_a, tmp_path, sciqa_wheel) -> Path:
    out = tmp_path / "bundle"
    pack(str(run_a), "--out", str(out), wheel=sciqa_wheel)
    return out


def _predict(bundle: Path, qfile: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(bundle / "predict.sh"), str(qfile), str(out)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip


def test_predict_names_a_missing_file(bundle, qfile, tmp_path):
    missing = bundle / "models" / "run_a" / "fold_1" / "model.safetensors"
    missing.unlink()
    done = _predict(bundle, qfile, tmp_path / "out")
    assert done.returncode == 1
    assert f"error: {missing}: missing from the bundle" in done.stderr
    assert not (tmp_path / "out").exists()


def test_predict_names_a_damaged_file(bundle, qfile, tmp_path):
    damaged = bundle / "models" / "run_a" / "fold_0" / "config.json"
    damaged.write_text("{}")
    done = _predict(bundle, qfile, tmp_path / "out")
    assert done.returncode == 1
    assert f"error: {damaged}: 2 bytes but manifest.json says" in done.stderr


def test_predict_usage(bundle):
    done = subprocess.run(["bash", str(bundle / "predict.sh")], capture_output=True, text=True)
    assert done.returncode == 2 and "usage:" in done.stderr
