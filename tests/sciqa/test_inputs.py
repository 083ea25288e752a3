"""Questions from ``hf:`` names, ``datasets`` save_to_disk folders and the layout presets
(sciqa/hf_datasets.py, sciqa/layouts.py), all through ``sciqa.io.read_questions``.

No network: folders and files are built in tmp_path; the ``hf:`` path runs the real
``datasets.load_dataset`` on a local repo folder (it looks for a folder of that name
first) and, for a name with no such folder, offline with an empty cache."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from sciqa.cli import app
from sciqa.errors import SchemaError, SciqaError
from sciqa.io import read_questions, write_table
from sciqa.layouts import Layout
from sciqa.runs import describe_inputs, input_digest

datasets = pytest.importorskip("datasets")
runner = CliRunner()

ARC_ROWS = [
    {"id": "q1", "question": "Why?", "choices": {"text": ["a", "b", "c"], "label": ["A", "B", "C"]},
     "answerKey": "B"},
    # labelled 1-3, as some ARC rows are: the key maps by position
    {"id": "q2", "question": "How?", "choices": {"text": ["x", "y", "z"], "label": ["1", "2", "3"]},
     "answerKey": "3"},
    {"id": "q3", "question": "Who?", "choices": {"text": ["x", "y"], "label": ["A", "B"]},
     "answerKey": "A"},
]  # fmt: skip
SCIQ_LIKE = {
    "question": [f"question {i}" for i in range(8)],
    "correct_answer": [f"right {i}" for i in range(8)],
    **{f"distractor{j}": [f"wrong {j}.{i}" for i in range(8)] for j in (1, 2, 3)},
    "support": ["a passage"] * 8,
}


def save(folder, rows: list[dict] | dict, split: str | None = None):
    table = datasets.Dataset.from_list(rows) if isinstance(rows, list) else None
    table = table if table is not None else datasets.Dataset.from_dict(rows)
    (datasets.DatasetDict({split: table, "train": table}) if split else table).save_to_disk(
        str(folder)
    )
    return folder


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty datasets cache in tmp_path, offline: nothing cached, nothing fetched."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return tmp_path / "hf-cache"


# --- presets ----------------------------------------------------------------------------


def test_arc_layout_folder_maps_keys_by_position_and_drops_other_counts(tmp_path, caplog):
    frame = read_questions(save(tmp_path / "arc", ARC_ROWS), require_answer=True)
    assert frame["id"].tolist() == ["q1", "q2"]
    assert frame[["A", "B", "C"]].values.tolist() == [["a", "b", "c"], ["x", "y", "z"]]
    assert frame["answer"].tolist() == ["B", "C"]
    assert "1 questions left out" in caplog.text


def test_arc_key_that_is_no_label_names_row_and_column(tmp_path):
    rows = [{**ARC_ROWS[0], "answerKey": "E"}]
    with pytest.raises(SchemaError, match=r"arc: row 1, id=q1, column 'answerKey': 'E' is not"):
        read_questions(save(tmp_path / "arc", rows))


def test_choices_list_with_integer_answer_from_parquet(tmp_path):
    path = tmp_path / "mmlu.parquet"
    pd.DataFrame(
        {"question": ["q1", "q2"], "choices": [["a", "b", "c"], ["d", "e", "f"]],
         "answer": [2, -1], "subject": ["x", "y"]}
    ).to_parquet(path)  # fmt: skip
    frame = read_questions(path)
    assert frame["answer"].tolist() == ["C", ""]  # -1: unlabelled
    assert frame["id"].str.fullmatch(r"[0-9a-f]{12}").all()
    assert frame["id"].tolist() == read_questions(path)["id"].tolist()


def test_choices_answer_out_of_range_is_an_error(tmp_path):
    path = tmp_path / "bad.parquet"
    pd.DataFrame({"question": ["q"], "choices": [["a", "b"]], "answer": [5]}).to_parquet(path)
    with pytest.raises(SchemaError, match=r"row 1, column 'answer': .*not the 0-based index"):
        read_questions(path)


def test_distractors_are_shuffled_by_seed_with_balanced_letters(tmp_path):
    folder = save(tmp_path / "sciq", SCIQ_LIKE)
    first = read_questions(folder, layout=Layout(seed=1), require_answer=True)
    again = read_questions(folder, layout=Layout(seed=1))
    other = read_questions(folder, layout=Layout(seed=2))
    assert first.equals(again)
    assert first["answer"].value_counts().to_dict() == {"A": 2, "B": 2, "C": 2, "D": 2}
    for _, row in first.iterrows():
        assert row[row["answer"]] == f"right {row['prompt'].split()[-1]}"
    assert first["context"].eq("a passage").all()
    # other seed: other letters, the same ids (derived before the shuffle)
    assert not first["answer"].equals(other["answer"])
    assert first["id"].tolist() == other["id"].tolist()


def test_kaggle_csv_without_id_gets_stable_content_ids(tmp_path, questions):
    path = tmp_path / "kaggle.csv"
    write_table(questions.drop(columns="id"), path)
    frame = read_questions(path, require_answer=True)
    assert frame["id"].nunique() == 3 and frame.columns[0] == "id"
    assert frame["id"].tolist() == read_questions(path)["id"].tolist()


def test_columns_map_any_other_layout(tmp_path):
    path = tmp_path / "medmcqa.csv"
    write_table(
        pd.DataFrame({"Question": ["q"], "opa": ["a"], "opb": ["b"], "cop": ["B"], "n": ["1"]}),
        path,
    )
    columns = {"prompt": "Question", "A": "opa", "B": "opb", "answer": "cop", "id": "n"}
    frame = read_questions(path, layout=Layout(0, columns=columns), require_answer=True)
    row = frame[["id", "prompt", "A", "B", "answer"]].values.tolist()
    assert row == [["1", "q", "a", "b", "B"]]
    with pytest.raises(SchemaError, match=r"data.columns maps A to 'opz', which is not a column"):
        read_questions(path, layout=Layout(0, columns={**columns, "A": "opz"}))


def test_no_preset_and_two_presets_are_one_line_errors(tmp_path):
    with pytest.raises(SchemaError, match=r"no layout preset fits the columns 'x', 'y'; presets: "):
        read_questions(save(tmp_path / "xy", {"x": [1], "y": [2]}))
    both = {"prompt": ["p"], "A": ["a"], "B": ["b"], "question": ["p"], "choices": [["a", "b"]]}
    with pytest.raises(SchemaError, match=r"fit the presets kaggle and choices; pick one"):
        read_questions(save(tmp_path / "both", both))
    frame = read_questions(tmp_path / "both", layout=Layout(0, "choices"))
    assert frame[["A", "B"]].values.tolist() == [["a", "b"]]
    with pytest.raises(SchemaError, match=r"data.layout arc needs question, choices\{text,label\}"):
        read_questions(tmp_path / "both", layout=Layout(0, "arc"))


def test_files_keep_their_schema_messages(tmp_path, questions):
    path = tmp_path / "q.csv"
    write_table(questions.drop(columns="prompt"), path)
    with pytest.raises(SchemaError, match=r"q\.csv: missing column\(s\) 'prompt'; found 'id'"):
        read_questions(path)


# --- save_to_disk folders and hf: names --------------------------------------------------


def test_dataset_dict_folder_needs_a_split_that_exists(tmp_path):
    folder = save(tmp_path / "arc", ARC_ROWS, split="test")
    assert len(read_questions(f"{folder}@test")) == 2
    with pytest.raises(SciqaError, match=r"has the splits test, train; name one, e.g. .*arc@test"):
        read_questions(folder)
    with pytest.raises(SciqaError, match=r"no split 'validation'; its splits are test, train$"):
        read_questions(f"{folder}@validation")


def test_a_plain_folder_is_still_refused_by_name(tmp_path):
    with pytest.raises(SciqaError, match=r"is a directory but not a datasets save_to_disk folder"):
        read_questions(tmp_path)


def test_hf_name_loads_through_load_dataset(tmp_path, monkeypatch, hf_cache):
    # load_dataset("own/mcq") reads a local folder of that name before asking the Hub
    monkeypatch.chdir(tmp_path)
    (tmp_path / "own" / "mcq" / "data").mkdir(parents=True)
    for split, n in (("train", 3), ("test", 2)):
        pd.DataFrame({**{k: v[:n] for k, v in SCIQ_LIKE.items()}}).to_parquet(
            tmp_path / "own" / "mcq" / "data" / f"{split}-00000-of-00001.parquet"
        )
    frame = read_questions("hf:own/mcq@test", require_answer=True)
    assert frame["prompt"].tolist() == ["question 0", "question 1"]
    assert input_digest("hf:own/mcq@test").startswith("datasets:")
    with pytest.raises(SciqaError, match=r"hf:own/mcq@dev: no split 'dev'; its splits are "):
        read_questions("hf:own/mcq@dev")
    with pytest.raises(SciqaError, match=r"hf:own/mcq: has the splits .*e\.g\. hf:own/mcq@"):
        read_questions("hf:own/mcq")


def test_hf_name_offline_without_cache_says_how_to_fill_it(hf_cache):
    with pytest.raises(SciqaError) as info:
        read_questions("hf:allenai/ai2_arc:ARC-Challenge@test")
    message = str(info.value)
    assert "\n" not in message
    assert f"not in the datasets cache ({hf_cache})" in message
    assert "datasets.load_dataset('allenai/ai2_arc', 'ARC-Challenge')" in message


def test_bad_hf_spec_is_named(tmp_path):
    with pytest.raises(SciqaError, match=r"hf:: not a Hub dataset; write hf:OWNER/NAME"):
        read_questions("hf:")


def test_manifest_and_digest_of_a_folder_follow_its_data(tmp_path):
    folder = save(tmp_path / "sciq", SCIQ_LIKE)
    entry = describe_inputs([folder])
    assert entry == [{"path": str(folder), "rows": 8, "fingerprint": input_digest(folder)}]
    before = input_digest(folder)
    save(tmp_path / "sciq", {**SCIQ_LIKE, "question": [f"other {i}" for i in range(8)]})
    assert input_digest(folder) != before


# --- the CLI ------------------------------------------------------------------------------


def test_validate_reads_a_folder_split_and_columns(tmp_path):
    folder = save(tmp_path / "arc", ARC_ROWS, split="test")
    result = runner.invoke(app, ["validate", f"{folder}@test", "--labelled"])
    assert result.exit_code == 0, result.output
    assert "ok, 2 questions, options A-C, labelled" in result.output
    path = tmp_path / "m.csv"
    write_table(pd.DataFrame({"Question": ["q"], "opa": ["a"], "opb": ["b"], "cop": ["A"]}), path)
    mapping = "prompt=Question,A=opa,B=opb,answer=cop"
    result = runner.invoke(app, ["validate", str(path), "--columns", mapping])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["validate", str(path), "--columns", "prompt"])
    assert result.exit_code == 1
    assert "--columns prompt: data.columns: 'prompt' is not SCIQA_COLUMN=INPUT_COLUMN" in (
        result.output
    )
    result = runner.invoke(app, ["validate", str(path), "--columns", "question=Question"])
    assert "'question' is not a column sciqa reads" in result.output
