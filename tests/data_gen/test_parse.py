"""Replies into questions (data_gen.parse), and how each backend is sent the reply schema
and the sampling settings (data_gen.backends)."""

from __future__ import annotations

import json

import pytest

from data_gen.backends import response_format, sampling
from data_gen.parse import Rejected, ReplySpec, json_schema, parse_reply

LETTERS = ["A", "B", "C", "D", "E"]
VALID = {
    "question": "Which gas do plants absorb?",
    "A": "Carbon dioxide",
    "B": "Oxygen",
    "C": "Nitrogen",
    "D": "Helium",
    "E": "Argon",
    "answer": "A",
}


# --- parsing -----------------------------------------------------------------------


def test_parse_valid_and_tolerant_extraction():
    assert parse_reply(json.dumps(VALID), LETTERS).options[0] == "Carbon dioxide"
    chatty = f"Here you go:\n```json\n{json.dumps(VALID)}\n```\nHope it helps {{smile}}"
    assert parse_reply(chatty, LETTERS).answer == "A"
    nested = {"question": "Q?", "options": dict(zip(LETTERS, "vwxyz", strict=True)), "answer": "b"}
    assert parse_reply(json.dumps(nested), LETTERS).answer == "B"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"F": "Neon"}, "wrong_option_count"),
        ({"answer": "F"}, "answer_not_a_letter"),
        ({"C": "oxygen"}, "duplicate_options"),
        ({"E": "All of the above"}, "meta_option"),
        ({"D": "  "}, "empty_option"),
        ({"question": " "}, "empty_prompt"),
        ({"answer": None}, "missing_field"),
    ],
)
def test_parse_rejects_with_reason(change, reason):
    reply = {k: v for k, v in {**VALID, **change}.items() if v is not None}
    with pytest.raises(Rejected) as caught:
        parse_reply(json.dumps(reply), LETTERS)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    "text", ['{"question": "Q", "A": ', "no json here", "[1, 2]", "__import__('os')"]
)
def test_parse_never_evaluates_and_rejects_non_objects(text):
    with pytest.raises(Rejected) as caught:
        parse_reply(text, LETTERS)
    assert caught.value.reason == "not_json"


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"B": "x" * 21}, "too_long"), ({"C": ", and so on"}, "pattern_mismatch")],
)
def test_limits_of_the_schema_are_checked_on_every_reply(change, reason):
    reply = {"question": "Which?", "A": "Iron", "B": "Gold", "C": "Lead", "answer": "A"}
    spec = ReplySpec(100, 20, None, r"^\w.*$")
    with pytest.raises(Rejected) as caught:
        parse_reply(json.dumps(reply | change), LETTERS[:3], spec)
    assert caught.value.reason == reason


# --- answer_first: the key's text first, sciqa picks its letter ---------------------

FIRST = {
    "question": "Which gas do plants absorb?",
    "correct_answer": "Carbon dioxide",
    "wrong_answer_1": "Oxygen",
    "wrong_answer_2": "Nitrogen",
    "wrong_answer_3": "Helium",
    "wrong_answer_4": "Argon",
}


def test_answer_first_keeps_the_key_and_spreads_its_letter():
    parsed = parse_reply(json.dumps(FIRST), LETTERS)
    assert parsed.options[LETTERS.index(parsed.answer)] == "Carbon dioxide"
    # The distractors keep their order around the key; the same reply, the same letter.
    assert [o for o in parsed.options if o != "Carbon dioxide"] == [
        "Oxygen",
        "Nitrogen",
        "Helium",
        "Argon",
    ]
    assert parse_reply(json.dumps(FIRST), LETTERS) == parsed
    letters = {
        parse_reply(json.dumps(FIRST | {"question": f"Which gas, case {i}?"}), LETTERS).answer
        for i in range(40)
    }
    assert letters == set(LETTERS)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"wrong_answer_5": "Neon"}, "wrong_option_count"),
        ({"wrong_answer_2": "carbon dioxide"}, "duplicate_options"),
        ({"wrong_answer_4": "None of the above"}, "meta_option"),
        ({"correct_answer": None}, "missing_field"),
    ],
)
def test_answer_first_rejects_with_reason(change, reason):
    reply = {k: v for k, v in {**FIRST, **change}.items() if v is not None}
    with pytest.raises(Rejected) as caught:
        parse_reply(json.dumps(reply), LETTERS)
    assert caught.value.reason == reason


def test_answer_first_reask_names_the_repeated_text_not_a_letter():
    spec = ReplySpec(layout="answer_first")
    with pytest.raises(Rejected) as caught:
        parse_reply(json.dumps(FIRST | {"wrong_answer_3": "oxygen"}), LETTERS, spec)
    assert caught.value.detail == (
        'two answers are the same ("oxygen"); write a different wrong answer'
    )


def test_answer_first_schema_writes_the_key_before_the_distractors():
    spec = ReplySpec(300, 150, None, r"^\w.*$", layout="answer_first")
    schema = json_schema(LETTERS, spec)
    assert list(schema["properties"]) == list(FIRST)
    assert schema["required"] == list(FIRST)
    assert schema["properties"]["wrong_answer_4"]["pattern"] == r"^\w.*$"
    parse_reply(json.dumps(FIRST), LETTERS, spec)  # a reply to that schema parses


# --- per-backend structured output ---------------------------------------------------


SCHEMA = json_schema(LETTERS[:3], ReplySpec(300, 150, r"^\w.*$", r"^\w.*$"))


@pytest.mark.parametrize(
    ("backend", "kind", "lengths"),
    [
        ("vllm", "json_schema", True),
        ("llama-server", "json_schema", True),
        ("ollama", "json_schema", True),
        ("generic", "json_schema", True),
        ("openai", "json_schema", False),  # strict mode refuses minLength/maxLength
        ("llama-cpp-python", "json_object", True),
    ],
)
def test_response_format_per_backend(backend, kind, lengths):
    sent = response_format(backend, "json_schema", SCHEMA)
    assert sent["type"] == kind
    schema = sent["schema"] if kind == "json_object" else sent["json_schema"]["schema"]
    assert ("maxLength" in schema["properties"]["A"]) is lengths
    assert schema["properties"]["A"]["pattern"] == r"^\w.*$"
    assert schema["properties"]["answer"]["enum"] == LETTERS[:3]


def test_sampling_names_the_repetition_penalty_per_backend():
    kwargs = {"presence_penalty": 1.5, "frequency_penalty": 0.0, "repetition_penalty": 1.1}
    assert sampling("vllm", **kwargs) == {"presence_penalty": 1.5, "repetition_penalty": 1.1}
    assert sampling("llama-server", **kwargs)["repeat_penalty"] == 1.1
    assert sampling("openai", **kwargs) == {"presence_penalty": 1.5}
    assert sampling("openai", presence_penalty=0.0) == {}  # zero: body as before
