import pandas as pd
import pytest

from sciqa.errors import SchemaError
from sciqa.evaluation.evaluate import score_submission
from sciqa.io import write_table
from sciqa.schema import validate_questions
from sciqa.submission import (
    make_submission,
    read_submission,
    validate_submission,
    write_submission,
)


def test_scores_join_on_id_not_row_order(questions):
    labels = validate_questions(questions, require_answer=True)  # answers A, B, B
    submission = validate_submission(make_submission(["2", "0", "1"], ["A B C", "A", "C D B"]))
    result = score_submission(submission, labels)
    assert result.n_questions == 3
    assert result.map_at_3 == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)
    assert result.accuracy == pytest.approx(1 / 3)


def test_missing_and_extra_ids_are_errors(questions):
    labels = validate_questions(questions, require_answer=True)
    with pytest.raises(SchemaError, match=r"no prediction for 1 of 3 labelled ids .*\('2'\)"):
        score_submission(validate_submission(make_submission(["0", "1"], ["A", "B"])), labels)
    extra = make_submission(["0", "1", "2", "9"], ["A"] * 4)
    with pytest.raises(SchemaError, match=r"1 ids are not in labels \('9'\)"):
        score_submission(validate_submission(extra), labels)


def test_letters_outside_the_options_are_errors(questions):
    labels = validate_questions(questions.drop(columns="E"), require_answer=True)
    submission = validate_submission(make_submission(["0", "1", "2"], ["A", "E B", "B"]))
    with pytest.raises(SchemaError, match=r"id=1, column 'prediction': 'E' is not an option"):
        score_submission(submission, labels)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"id": ["1"], "pred": ["A"]}), r"missing column\(s\) 'prediction'"),
        (
            pd.DataFrame({"id": ["1", "1"], "prediction": ["A", "B"]}),
            r"row 2, column 'id': duplicate id '1'",
        ),
        (
            pd.DataFrame({"id": ["1", "2"], "prediction": ["A", "b,c"]}),
            r"row 2, id=2, column 'prediction': 'b,c' is not an option letter",
        ),
        (
            pd.DataFrame({"id": ["1", "2"], "prediction": ["A", "A A A"]}),
            r"row 2, id=2, column 'prediction': 'A A A' repeats 'A'; give each letter once",
        ),
        (
            pd.DataFrame({"id": ["1", "2"], "prediction": ["A B C D", "A"]}),
            r"row 1, id=1, column 'prediction': 'A B C D' has 4 letters; give at most 3",
        ),
        (
            pd.DataFrame({"id": ["1", "2"], "prediction": ["C", " "]}),
            r"row 2, id=2, column 'prediction': empty prediction; give 1 to 3 option letters",
        ),
    ],
)
def test_bad_submissions_fail_naming_row_and_column(tmp_path, frame, message):
    path = write_table(frame, tmp_path / "sub.csv")
    with pytest.raises(SchemaError, match=rf"sub\.csv: {message}"):
        read_submission(path)


def test_one_to_three_distinct_letters_are_valid(tmp_path, questions):
    labels = validate_questions(questions, require_answer=True)  # answers A, B, B
    predictions = ["A", "C B", "E D B"]
    path = write_submission(make_submission(["0", "1", "2"], predictions), tmp_path / "s.csv")
    result = score_submission(read_submission(path), labels)
    assert result.map_at_3 == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)


def test_an_empty_prediction_is_refused_when_written(tmp_path):
    with pytest.raises(SchemaError, match=r"s\.csv: row 2, id=1, column 'prediction': empty"):
        write_submission(make_submission(["0", "1"], ["A", ""]), tmp_path / "s.csv")
    assert not (tmp_path / "s.csv").exists()
