"""Load each offline default for real and use it once: the proof behind docs/assets.md.

Each check returns a one-line summary and raises if the asset does not work. Heavy
libraries are imported inside the checks so the CLI only pays for what it runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from sciqa.assets.registry import (
    GEMMA,
    QWEN,
    ModelSource,
    PackagedAsset,
    file_sha256,
    packaged_wikipedia,
    resolve_model,
)

_PAIR = (
    "Photosynthesis turns light energy into chemical energy in plants.",
    "Plants convert sunlight into chemical energy through photosynthesis.",
)
_UNRELATED = "The stock market closed higher on Friday."


def check_embedding(source: ModelSource | None = None) -> str:
    """Encode sentences; a paraphrase must score above an unrelated sentence."""
    from sentence_transformers import SentenceTransformer

    source = source or resolve_model("default", "embedding")
    model = SentenceTransformer(source.name_or_path, device="cpu")
    vectors = model.encode([*_PAIR, _UNRELATED], normalize_embeddings=True)
    related, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    if not related > unrelated:
        raise AssertionError(f"paraphrase cosine {related:.3f} <= unrelated {unrelated:.3f}")
    return f"dim {vectors.shape[1]}, paraphrase cosine {related:.3f} vs unrelated {unrelated:.3f}"


def check_backbone(source: ModelSource | None = None) -> str:
    """One multiple-choice forward and backward pass on 2 questions x 5 options."""
    import torch
    from transformers import AutoModelForMultipleChoice, AutoTokenizer

    source = source or resolve_model("default", "backbone")
    tokenizer = AutoTokenizer.from_pretrained(source.name_or_path)
    model = AutoModelForMultipleChoice.from_pretrained(source.name_or_path)
    prompts = ["What is the SI unit of force?", "Which planet is largest?"]
    options = [
        ["newton", "joule", "watt", "pascal", "tesla"],
        ["Mars", "Venus", "Jupiter", "Earth", "Mercury"],
    ]
    n_options = len(options[0])
    batch = tokenizer(
        [p for p in prompts for _ in range(n_options)],
        [o for row in options for o in row],
        padding=True,
        return_tensors="pt",
    )
    batch = {k: v.view(len(prompts), n_options, -1) for k, v in batch.items()}
    output = model(**batch, labels=torch.tensor([0, 2]))
    output.loss.backward()
    shape = tuple(output.logits.shape)
    if shape != (len(prompts), n_options):
        raise AssertionError(f"logits shape {shape}")
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return f"{type(model).__name__}, {params:.1f}M params, logits {shape}, loss {output.loss:.3f}"


def check_llm(source: ModelSource | None = None, max_new_tokens: int = 24) -> str:
    """Greedy chat completion from the instruction-tuned LLM."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = source or resolve_model("default", "llm")
    kwargs = source.from_pretrained_kwargs()
    tokenizer = AutoTokenizer.from_pretrained(source.name_or_path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        source.name_or_path, dtype=torch.float32, **kwargs
    ).eval()
    messages = [{"role": "user", "content": "In one sentence, what does a thermometer measure?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
        )
    reply = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    if not reply.strip():
        raise AssertionError("the LLM generated no text")
    return f"replied {reply.strip()[:70]!r}"


# A base LM (no chat template): it must prefer the true completion of each sentence.
_FACTS = (
    ("Water is made of hydrogen and", " oxygen", " copper"),
    ("The planet closest to the Sun is", " Mercury", " Neptune"),
    ("Plants make their food by", " photosynthesis", " digestion"),
)


def _verify_assembled(name: str, asset: PackagedAsset) -> None:
    """The assembled GGUF's sha256 again (a file changed in the cache since assembly)."""
    source = resolve_model(name, "llm")
    gguf = Path(source.name_or_path) / str(source.gguf_file)
    digest = file_sha256(gguf)
    if digest != asset.sha256:
        raise AssertionError(
            f"{gguf}: sha256 {digest[:16]}... is not {str(asset.sha256)[:16]}...; delete it "
            "and run `sciqa assets` to assemble it again"
        )


def check_gemma() -> str:
    """The assembled GGUF's sha256 again, then the converted model prefers true facts."""
    import torch
    from transformers import AutoModelForCausalLM

    from sciqa.assets.llm import load_causal_tokenizer, prepare_model

    _verify_assembled("gemma", GEMMA)
    folder = prepare_model("gemma")
    tokenizer = load_causal_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    right = 0
    for prompt, true, false in _FACTS:
        scores = []
        for answer in (true, false):
            ids = tokenizer(prompt + answer, return_tensors="pt")["input_ids"]
            n = len(tokenizer(prompt)["input_ids"])
            with torch.no_grad():
                logp = model(ids).logits[0, :-1].float().log_softmax(-1)
            scores.append(float(logp[n - 1 :].gather(-1, ids[0, n:, None]).sum()))
        right += scores[0] > scores[1]
    if right < len(_FACTS):
        raise AssertionError(f"preferred the true completion in {right}/{len(_FACTS)} facts")
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return (
        f"sha256 ok, {type(model).__name__} {params:.0f}M params, "
        f"true completion preferred {right}/{len(_FACTS)}"
    )


# An instruction model in letter mode: the next token after the chat prompt, among A-D.
# Qwen2.5-Coder is a code model: it answers "Earth" to the planet question (2026-12-03),
# so the check asks for 4 of 5 (a random guesser: 1.6%).
_LETTER_QUESTIONS = (
    (
        "Which gas do plants take in from the air to make sugar?",
        "oxygen|carbon dioxide|nitrogen|helium",
        "B",
    ),
    ("At sea level, water boils at", "50 degrees C|75 degrees C|100 degrees C|150 degrees C", "C"),
    ("Which planet is closest to the Sun?", "Mercury|Venus|Earth|Mars", "A"),
    ("What part of the cell holds its DNA?", "cell wall|ribosome|vacuole|nucleus", "D"),
    ("What force pulls a dropped ball to the ground?", "gravity|magnetism|friction|static", "A"),
)
_LETTERS_RIGHT = 4


def check_qwen() -> str:
    """The assembled GGUF's sha256 again, its conversion (once), then letter-mode answers
    to five easy questions through the chat template."""
    import torch
    from transformers import AutoModelForCausalLM

    from sciqa.assets.llm import load_causal_tokenizer, prepare_model

    _verify_assembled("qwen", QWEN)
    folder = prepare_model("qwen")
    tokenizer = load_causal_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto").eval()
    letters = "ABCD"
    letter_ids = [tokenizer.convert_tokens_to_ids(letter) for letter in letters]
    right = 0
    for question, options, key in _LETTER_QUESTIONS:
        lines = [
            f"{letter}. {text}" for letter, text in zip(letters, options.split("|"), strict=True)
        ]
        content = "\n".join([question, *lines, "Answer with the letter only."])
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"]
        with torch.no_grad():
            logits = model(ids).logits[0, -1, letter_ids]
        right += letters[int(logits.argmax())] == key
    if right < _LETTERS_RIGHT:
        raise AssertionError(
            f"picked the key in {right}/{len(_LETTER_QUESTIONS)} questions, "
            f"fewer than {_LETTERS_RIGHT}"
        )
    params = sum(p.numel() for p in model.parameters()) / 1e6
    dtype = str(model.dtype).removeprefix("torch.")
    return (
        f"sha256 ok, {type(model).__name__} {params:.0f}M params ({dtype}), "
        f"picked the key in {right}/{len(_LETTER_QUESTIONS)} letter questions"
    )


def check_corpus() -> str:
    articles = packaged_wikipedia()
    words = int(articles["text"].str.split().str.len().sum())
    return f"{len(articles)} articles, {words:,} words, e.g. {articles['title'].iat[0]!r}"


def check_benchmarks() -> str:
    from sciqa.assets.question_sets import SETS, benchmark_questions

    counts = [f"{name} {len(benchmark_questions(name)[0])}" for name in SETS]
    return "questions: " + ", ".join(counts)


CHECKS: dict[str, Callable[[], str]] = {
    "embedding": check_embedding,
    "backbone": check_backbone,
    "llm": check_llm,
    "gemma": check_gemma,
    "qwen": check_qwen,
    "corpus": check_corpus,
    "benchmarks": check_benchmarks,
}


def run_check(role: str) -> tuple[str, float]:
    """Run one check; return its summary and the seconds it took."""
    start = time.perf_counter()
    summary = CHECKS[role]()
    return summary, time.perf_counter() - start
