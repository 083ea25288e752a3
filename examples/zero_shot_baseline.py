"""Zero-shot baseline: rank each question's options by embedding similarity to its prompt.

A real, model-made submission to exercise ``sciqa eval`` before any trained model
exists; not a pipeline stage. Usage:

    python examples/zero_shot_baseline.py QUESTIONS.csv SUBMISSION.csv [--config c.toml]
"""

from __future__ import annotations

import argparse

from sentence_transformers import SentenceTransformer

from sciqa.assets.registry import resolve_model
from sciqa.config import load_config
from sciqa.io import read_questions
from sciqa.metrics import top3_letters
from sciqa.scoring.zero_shot import option_scores
from sciqa.submission import make_submission, write_submission


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("questions")
    parser.add_argument("submission")
    parser.add_argument("--config", default=None)
    args = parser.parse_args()

    config = load_config(args.config)
    questions = read_questions(args.questions)
    source = resolve_model(config.models.embedding, "embedding")
    model = SentenceTransformer(source.name_or_path, device="cpu")
    scores = option_scores(model, questions, show_progress_bar=True)
    write_submission(make_submission(questions["id"], top3_letters(scores)), args.submission)
    print(f"{args.submission}: {len(questions)} predictions")


if __name__ == "__main__":
    main()
