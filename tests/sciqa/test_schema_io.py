import pandas as pd
import pytest

from sciqa.errors import SchemaError, SciqaError
from sciqa.io import read_questions, read_table, write_questions, write_table
from sciqa.schema import option_letters, validate_questions


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_round_trip_keeps_every_cell(tmp_path, questions, suffix):
    path = write_questions(questions, tmp_path / f"q{suffix}", require_answer=True)
    loaded = read_questions(path, require_answer=True)
    pd.testing.assert_frame_equal(loaded, questions)


def test_csv_keeps_na_like_options_and_leading_zeros(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("id,prompt,A,B,C,D,E,answer\n007,Q?,None,NA,null,N/A,0,A\n")
    frame = read_questions(path)
    assert frame.loc[0, "id"] == "007"
    assert frame.loc[0, ["A", "B", "C", "D", "E"]].tolist() == ["None", "NA", "null", "N/A", "0"]


def test_csv_with_byte_order_mark_reads_its_first_column(tmp_path, questions):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + questions.to_csv(index=False).encode())
    assert read_questions(path)["id"].tolist() == ["0", "1", "2"]


def test_missing_answers_become_empty_strings(tmp_path, questions):
    questions["answer"] = ["A", None, "B"]
    path = write_table(questions, tmp_path / "q.parquet")
    assert read_questions(path)["answer"].tolist() == ["A", "", "B"]


def test_ids_and_options_become_strings(questions):
    questions["id"] = [10, 11, 12]
    questions["E"] = [1, 2, 3]
    frame = validate_questions(questions)
    assert frame["id"].tolist() == ["10", "11", "12"]
    assert frame["E"].tolist() == ["1", "2", "3"]


def test_answer_is_optional_at_inference(questions):
    frame = validate_questions(questions.drop(columns="answer"))
    assert "answer" not in frame.columns
    with pytest.raises(SchemaError, match=r"missing column.*'answer'"):
        validate_questions(questions.drop(columns="answer"), require_answer=True)


def test_optional_context_and_source_columns_pass_through(questions):
    questions["context"] = ["ctx"] * 3
    questions["source"] = ["kaggle"] * 3
    questions["source_id"] = ["a", "b", "c"]
    frame = validate_questions(questions)
    assert frame["context"].tolist() == ["ctx"] * 3
    assert frame["source"].tolist() == ["kaggle"] * 3
    assert frame["source_id"].tolist() == ["a", "b", "c"]


def test_option_letters_are_the_contiguous_run_from_a():
    assert option_letters(["id", "prompt", "A", "B", "C", "D", "E"]) == list("ABCDE")
    assert option_letters(["A", "B", "D"]) == ["A", "B"]
    assert option_letters(["prompt"]) == []


def test_number_of_options_comes_from_the_data(questions):
    four = questions.drop(columns="E")
    assert option_letters(validate_questions(four).columns) == list("ABCD")
    four.loc[0, "answer"] = "E"
    with pytest.raises(SchemaError, match=r"'E' is not one of A, B, C, D$"):
        validate_questions(four)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop(columns="prompt"), r"q\.csv: missing column\(s\) 'prompt'; found 'id'"),
        (lambda f: f.drop(columns=["A", "B", "C", "D", "E"]), r"missing column\(s\) 'A', 'B'"),
        (
            lambda f: f.assign(answer=["A", "F", "B"]),
            r"q\.csv: row 2, id=1, column 'answer': 'F' is not one of A, B, C, D, E$",
        ),
        (
            lambda f: f.assign(C=["x", "  ", "y"]),
            r"q\.csv: row 2, id=1, column 'C': empty option; every question needs all 5 "
            r"options A-E \(one option count per file\)",
        ),
        (
            lambda f: f.assign(id=["0", "1", "0"]),
            r"q\.csv: row 3, id=0, column 'id': duplicate id '0' \(first at row 1\)$",
        ),
        (
            lambda f: f.assign(prompt=["a", "b", ""]),
            r"row 3, id=2, column 'prompt': empty value$",
        ),
        (
            lambda f: f.assign(answer=["A", "G", "H"]),
            r"row 2.*'G' is not one of .* \(and 1 more problem\)$",
        ),
        (lambda f: f.iloc[:0], r"q\.csv: contains no questions$"),
    ],
)
def test_bad_files_fail_with_one_line_naming_file_row_and_column(
    tmp_path, questions, mutate, message
):
    path = tmp_path / "q.csv"
    write_table(mutate(questions), path)
    with pytest.raises(SchemaError, match=message) as info:
        read_questions(path)
    assert "\n" not in str(info.value)


def test_option_columns_with_a_gap_name_the_missing_letter(questions):
    skipping = questions.drop(columns="C").assign(answer=["A", "C", "D"])
    with pytest.raises(SchemaError) as info:
        validate_questions(skipping, "q.csv")
    assert str(info.value) == (
        "q.csv: option columns A, B, D, E skip C; options must be A, B, C, ... without gaps: "
        "rename or add column C"
    )
    with pytest.raises(SchemaError, match=r"option columns B, C, D, E skip A;"):
        validate_questions(questions.drop(columns="A"))


def test_rows_with_fewer_options_are_one_problem_with_the_rule(questions):
    mixed = pd.concat([questions] * 8, ignore_index=True).assign(id=[str(i) for i in range(24)])
    mixed.loc[1::2, "E"] = ""  # 12 rows have 4 options, 12 have 5
    mixed.loc[3, "D"] = None
    with pytest.raises(SchemaError) as info:
        validate_questions(mixed, "q.csv")
    assert str(info.value) == (
        "q.csv: 12 of 24 rows have empty options (row 2, id=1, column 'E'; row 4, id=3, "
        "columns 'D', 'E'; row 6, id=5, column 'E', ...); every question needs all 5 options "
        "A-E (one option count per file): fill the empty cells, or put the questions with "
        "fewer options in their own file without the unused columns"
    )


def test_a_directory_is_not_a_table(tmp_path):
    with pytest.raises(SciqaError) as info:
        read_table(tmp_path)
    assert str(info.value) == f"{tmp_path}: is a directory, expected a .csv/.parquet/.jsonl file"
    (tmp_path / "q.csv").mkdir()
    with pytest.raises(SciqaError, match=r"q\.csv: is a directory"):
        read_questions(tmp_path / "q.csv")


def test_missing_answer_value_is_only_an_error_when_labels_are_required(tmp_path, questions):
    questions.loc[1, "answer"] = ""
    path = write_table(questions, tmp_path / "q.csv")
    assert read_questions(path)["answer"].tolist() == ["A", "", "B"]
    with pytest.raises(SchemaError, match="row 2, id=1, column 'answer': empty answer"):
        read_questions(path, require_answer=True)


def test_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(SciqaError, match=r"nope\.csv: file not found"):
        read_table(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(SchemaError, match=r"empty\.csv: file is empty"):
        read_table(tmp_path / "empty.csv")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(SchemaError, match=r"bad\.parquet: cannot be read as parquet"):
        read_table(tmp_path / "bad.parquet")
    (tmp_path / "ragged.csv").write_text('id,prompt\n1,"unterminated\n')
    with pytest.raises(SchemaError, match=r"ragged\.csv: cannot be read as csv"):
        read_table(tmp_path / "ragged.csv")
    with pytest.raises(SciqaError, match=r"unsupported file type '\.xlsx'"):
        read_table(tmp_path / "q.xlsx")


def test_failed_write_leaves_existing_file_intact(tmp_path, questions):
    path = write_questions(questions, tmp_path / "q.csv")
    before = path.read_bytes()
    with pytest.raises(SchemaError):
        write_questions(questions.assign(answer="Z"), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["q.csv"]
