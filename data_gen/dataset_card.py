"""The dataset card ``sciqa gen`` writes beside its questions, so others can load them.

``README.md`` in OUT's folder, a Hugging Face dataset card: YAML metadata, then prose.
Its ``configs`` name OUT as the one data file of the split ``train``, so
``datasets.load_dataset(FOLDER)`` and the Hub's viewer read the questions and nothing
else of the folder (rejects, manifest, cache); ``dataset_info`` holds the features and
the row count, ``license`` the passages' licence (``gen.source_license``), and ``sciqa``
the provenance: writer model, prompts file and sha256, passages file and digest, the
filters with what each dropped. A ``README.md`` gen did not write is never replaced.

>>> size_category(999), size_category(1_000), size_category(25_000)
('n<1K', '1K<n<10K', '10K<n<100K')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from sciqa import __version__
from sciqa.config import SciqaConfig
from sciqa.errors import SciqaError
from sciqa.runs import file_digest, input_digest
from sciqa.schema import ANSWER, CONTEXT, ID, PROMPT, SOURCE, SOURCE_ID, option_letters

CARD = "README.md"
MARK = "<!-- written by sciqa gen, which rewrites this file on every run -->"
# The Hub's size_categories values, by upper bound.
SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"))
SIZES += ((1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"))
SAVED_DATA = "data-*.arrow"  # the data files of a save_to_disk folder


def size_category(n: int) -> str:
    return next((name for bound, name in SIZES if n < bound), "100M<n<1B")


def card_path(out: Path) -> Path:
    return out.parent / CARD


def check_card(out: Path) -> None:
    """Refuse an OUT whose folder has a README.md that gen did not write (its card would
    replace it), before any request is paid for."""
    card = card_path(out)
    if card.is_file() and MARK not in card.read_text(encoding="utf-8", errors="replace"):
        raise SciqaError(
            f"{card}: exists and sciqa gen did not write it; gen writes its dataset card "
            f"there, so put --out in a folder of its own (e.g. {out.parent / 'gen' / out.name})"
        )


def data_files(out: Path) -> str:
    """OUT as a card's ``configs`` path, relative to the card: the file, or the data
    files of a save_to_disk folder."""
    return f"{out.name}/{SAVED_DATA}" if not out.suffix else out.name


def filters(config: SciqaConfig, post: dict[str, Any], excludes: list[str]) -> dict[str, Any]:
    """Each filter in the order it ran: its setting and how many questions it dropped."""
    gen = config.gen
    dropped = post.get("dropped_by_reason", {})

    def count(*reasons: str) -> int:
        return sum(n for reason, n in dropped.items() if reason.startswith(reasons))

    judge = f"{gen.scorer}, p(answer)"
    shortcuts = ", ".join(gen.audit_shortcuts)
    return {
        "duplicates": {
            "setting": f"exact, and cosine >= {gen.near_dup_threshold}" if gen.dedup else "off",
            "dropped": count("duplicate_"),
        },
        "leaks": {
            "setting": ("near or equal to " + ", ".join(excludes)) if excludes else "no --exclude",
            "dropped": count("leak"),
        },
        "unanswerable": {
            "setting": f"{judge} with the passage < {gen.answerable_confidence}"
            if gen.answerability_filter
            else "off",
            "dropped": count("unanswerable"),
        },
        "too_easy": {
            "setting": f"{judge} without the passage >= {gen.too_easy_confidence}"
            if gen.too_easy_filter
            else "off",
            "dropped": count("too_easy"),
        },
        "shortcuts": {
            "setting": f"{gen.audit_action} ({shortcuts})",
            "dropped": count("shortcut_"),
        },
    }


def card_text(
    kept: pd.DataFrame,
    out: Path,
    config: SciqaConfig,
    counts: dict[str, Any],
    *,
    writer: str,
    prompts: Path,
    passages: Path,
    excludes: list[Path],
) -> str:
    """The whole ``README.md``: YAML front matter, then the prose."""
    import pyarrow as pa
    from datasets import Features
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from huggingface_hub import DatasetCardData

    gen, post = config.gen, counts["postprocess"]
    table = pa.Table.from_pandas(kept, preserve_index=False)
    split = SplitInfo(name="train", num_bytes=table.nbytes, num_examples=len(kept))
    info = DatasetInfo(features=Features.from_arrow_schema(table.schema), splits=SplitDict())
    info.splits.add(split)
    info.dataset_size = table.nbytes
    config_entry: dict[str, Any] = {
        "config_name": "default",
        "data_files": [{"split": "train", "path": data_files(out)}],
    }
    if out.suffix.lower() == ".csv":
        config_entry["keep_default_na"] = False  # an option "None" or "NA" stays text
    steps = filters(config, post, [p.name for p in excludes])
    provenance = {
        "generator": f"sciqa {__version__}",
        "writer_model": writer,
        "temperature": gen.temperature,
        "reply_layout": gen.reply_layout,
        "prompts_file": prompts.name,
        "prompts_sha256": file_digest(prompts).removeprefix("sha256:"),
        "passages_file": passages.name,
        "passages_digest": input_digest(passages),
        "source_license": gen.source_license,
        "seed": config.seed,
        "passages": counts["selection"],
        "replies": counts["replies"],
        "filters": steps,
        "kept": post["kept"],
    }
    card = DatasetCardData(
        license=gen.source_license,
        language=["en"],
        size_categories=[size_category(len(kept))],
        task_categories=["multiple-choice", "question-answering"],
        task_ids=["multiple-choice-qa"],
        source_datasets=["original"],
        pretty_name=f"sciqa gen: {out.name}",
        tags=["sciqa", "synthetic", "science"],
        configs=[config_entry],
        sciqa=provenance,
    )
    DatasetInfosDict({"default": info}).to_dataset_card_data(card)
    body = _prose(kept, out, gen.source_license, provenance)
    return f"---\n{card.to_yaml()}\n---\n{MARK}\n\n{body}"


def _prose(kept: pd.DataFrame, out: Path, license_: str, p: dict[str, Any]) -> str:
    letters = option_letters(kept.columns)
    options = f"{letters[0]}-{letters[-1]}" if letters else "none"
    replies, chosen = p["replies"], p["passages"]
    rejected = ", ".join(f"{k} {v}" for k, v in replies["rejected_by_reason"].items()) or "none"
    steps = "\n".join(
        f"| {name} | {step['setting']} | {step['dropped']} |" for name, step in p["filters"].items()
    )
    if out.suffix.lower() == ".csv":
        load = f'load_dataset("csv", data_files="{out.name}", keep_default_na=False)["train"]'
    elif out.suffix:
        kind = "json" if out.suffix.lower() == ".jsonl" else out.suffix.lower().lstrip(".")
        load = f'load_dataset("{kind}", data_files="{out.name}")["train"]'
    else:
        load = f'load_from_disk("{out.name}")'
    columns = {
        ID: "question id, `gen-<passage_id>-<k>`",
        PROMPT: "the question",
        **{letter: "an option" for letter in letters},
        ANSWER: "the correct option's letter",
        CONTEXT: "the passage the question was written from",
        SOURCE: "`gen:<writer model>`",
        SOURCE_ID: "the passage's id",
    }
    fields = "\n".join(
        f"| `{name}` | {what} |" for name, what in columns.items() if name in kept.columns
    )
    return f"""# {out.name}

{p["kept"]} multiple-choice science questions ({len(letters)} options, {options}, one
correct), each written by `{p["writer_model"]}` from one passage by `sciqa gen`
({p["generator"]}), then filtered.

```python
from datasets import load_dataset, load_from_disk

questions = load_dataset("THIS_FOLDER")["train"]  # or "OWNER/NAME" once on the Hub
questions = {load}  # OUT alone, from this folder
```

## Fields

| column | what |
|---|---|
{fields}

## How it was made

- Passages: `{p["passages_file"]}` ({p["passages_digest"]}): {chosen.get("passages")} read,
  {chosen.get("science")} eligible, {chosen.get("selected")} used.
- Writer: `{p["writer_model"]}`, temperature {p["temperature"]}, reply layout
  `{p["reply_layout"]}`, prompts `{p["prompts_file"]}` (sha256 {p["prompts_sha256"]}),
  seed {p["seed"]}.
- Replies: {replies["replies"]} for {replies["jobs"]} questions, {replies["valid"]} valid;
  rejected: {rejected}.

| filter | setting | dropped |
|---|---|---|
{steps}

Kept: {p["kept"]}. The YAML header's `sciqa` section holds the same figures.

## Licence

The passages' text is under `{license_}` (`gen.source_license`; Wikipedia's text, as in
sciqa's packaged sample, is CC BY-SA 4.0: attribute "Wikipedia"). The questions quote
and paraphrase it, so they are shared under the same licence.
"""
