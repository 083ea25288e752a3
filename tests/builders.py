"""One factory per test object: questions, configs, tiny models and run dirs.

Tests build everything they need here (no downloads): tiny random encoders with a
word-level vocabulary, a tiny random Llama with a byte-level BPE tokenizer (as a folder,
or as a quantized GGUF file like the packaged LLMs), model dirs
saved like ``sciqa train`` folds, run dirs with their ``oof.parquet``; and a reader of the
logits ``sciqa infer`` writes. Test modules import from here and never from each other.
"""

from __future__ import annotations

import functools
import json
import string
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sciqa.config import SciqaConfig, load_config

WORDS = [
    "which",
    "what",
    "is",
    "the",
    "of",
    "a",
    "an",
    "in",
    "to",
    "gas",
    "force",
    "unit",
    "particle",
    "energy",
    "cell",
    "light",
    "water",
    "earth",
    "atmosphere",
    "magnetic",
    "flux",
    "photon",
    "gluon",
    "boson",
    "nitrogen",
    "oxygen",
    "argon",
    "carbon",
    "tesla",
    "weber",
    "henry",
    "gauss",
    "most",
    "makes",
    "up",
    "mediates",
    "electromagnetic",
    "si",
    "none",
    "na",
    "dioxide",
    "w",
    "higgs",
    "graviton",
    "context",
    "passage",
    "about",
    "science",
]
LETTERS = list("ABCDE")
TRAIN_WORDS = (  # noqa: SIM905 (one string reads better than 36 list items)
    "the a is what which of in on gas water sun plant light energy red blue cell atom heat "
    "cold moon earth rock iron salt sugar leaf root seed wind rain ice fire"
).split()

# --- questions ----------------------------------------------------------------------

Count = int | tuple[int, int]  # a fixed number of words, or a range drawn per row


def _words(rng: np.random.Generator, words: Sequence[str], count: Count) -> str:
    size = count if isinstance(count, int) else int(rng.integers(*count))
    return " ".join(rng.choice(words, size=size))


def make_questions(
    n: int = 10,
    *,
    n_options: int = 5,
    seed: int = 0,
    words: Sequence[str] = WORDS,
    prompt_words: Count = (3, 12),
    option_words: Count = (1, 4),
    context_words: Count | None = (0, 40),
    answers: str = "random",
    groups: int | None = None,
    id_format: str = "q{:02d}",
    sources: Sequence[str] | None = None,
) -> pd.DataFrame:
    """``n`` labelled questions of random ``words``, in the sciqa schema.

    ``answers``: ``random`` (drawn per row) or ``cycle`` (A, B, C, ... in turn);
    ``context_words=None``: no context column; ``groups``: a ``source_id`` of ``groups``
    distinct values, for grouped folds; ``sources``: a ``source`` column, row ``i`` from
    ``sources[i % len(sources)]`` (the words drawn are the same with or without it).
    """
    rng = np.random.default_rng(seed)
    letters = string.ascii_uppercase[:n_options]
    rows = []
    for i in range(n):
        row = {"id": id_format.format(i), "prompt": _words(rng, words, prompt_words)}
        for letter in letters:
            row[letter] = _words(rng, words, option_words)
        pick = int(rng.integers(0, n_options)) if answers == "random" else i % n_options
        row["answer"] = letters[pick]
        if context_words is not None:
            row["context"] = _words(rng, words, context_words)
        if groups:
            row["source_id"] = f"chunk{i % groups}"
        if sources:
            row["source"] = sources[i % len(sources)]
        rows.append(row)
    return pd.DataFrame(rows)


# Train tests' questions: fixed lengths over TRAIN_WORDS, answers A, B, C, D in turn.
train_questions = functools.partial(
    make_questions,
    n_options=4,
    words=TRAIN_WORDS,
    prompt_words=6,
    option_words=2,
    context_words=40,
    answers="cycle",
    id_format="q{:03d}",
)


# --- configs ------------------------------------------------------------------------


# Presets: small batches, so a few questions make several batches.
INFER_SMALL = ("infer.batch_size=3", "causal_lm.batch_size=3")
TRAIN_SMALL = (
    "train.epochs=1",
    "train.batch_size=4",
    "train.max_length=48",
    "train.logging_steps=1000",
)
CAUSAL_TRAIN_SMALL = (
    "train.epochs=1",
    "train.batch_size=4",
    "train.eval_batch_size=4",
    "train.logging_steps=1000",
    "causal_lm.max_length=48",  # the contexts are longer: truncation is exercised too
)
# Passages of about 20 words, so the articles of WIKI_ARTICLES split into several.
RETRIEVAL_SMALL = ("retrieval.chunk_words=20", "retrieval.chunk_overlap=5")


def make_config(*overrides: str) -> SciqaConfig:
    """The defaults with ``--set``-style ``overrides`` (presets first, e.g. INFER_SMALL)."""
    return load_config(None, list(overrides))


# --- tiny encoders ------------------------------------------------------------------

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def write_vocab(folder: Path, words: Sequence[str]) -> Path:
    """A BERT-style ``vocab.txt``: the special tokens, then one word per line."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vocab.txt"
    path.write_text("\n".join([*SPECIAL_TOKENS, *words]) + "\n", encoding="utf-8")
    return path


def tiny_sizes(words: Sequence[str], hidden: int, layers: int) -> dict[str, Any]:
    """Config keyword arguments for a tiny encoder over ``words``."""
    return {
        "vocab_size": len(words) + len(SPECIAL_TOKENS),
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "intermediate_size": 2 * hidden,
        "max_position_embeddings": 128,
    }


def make_model(path: Path, seed: int, *, meta: bool = True, letters=LETTERS, fold: int = 0):
    """A tiny random BertForMultipleChoice over :data:`WORDS`, saved like a sciqa train fold."""
    import torch
    import transformers

    tokenizer = transformers.BertTokenizerFast(vocab_file=str(write_vocab(path, WORDS)))
    torch.manual_seed(seed)
    config = transformers.BertConfig(**tiny_sizes(WORDS, hidden=16, layers=1))
    transformers.BertForMultipleChoice(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    if meta:
        (path / "sciqa_model.json").write_text(
            json.dumps(
                {
                    "format": "sciqa-mc/1",
                    "max_length": 64,
                    "use_context": True,
                    "n_options": len(letters),
                    "letters": list(letters),
                    "fold": fold,
                    "backbone": "tiny-bert",
                }
            )
        )
        (path / "metrics.json").write_text(json.dumps({"map_at_3": 0.5}))
    return path


def make_run(root: Path, seed: int, folds: int = 2, questions: pd.DataFrame | None = None) -> Path:
    """A sciqa train RUN_DIR: fold_<i>/ plus oof.parquet (with answers) from the folds."""
    questions = make_questions(12, seed=99) if questions is None else questions
    rng = np.random.default_rng(seed)
    for i in range(folds):
        make_model(root / f"fold_{i}", seed * 10 + i, fold=i)
    oof = pd.DataFrame({"id": questions["id"], "fold": np.arange(len(questions)) % folds})
    logits = rng.normal(size=(len(questions), 5))
    for j, letter in enumerate(LETTERS):
        oof[letter] = logits[:, j]
    oof["answer"] = questions["answer"]
    oof.to_parquet(root / "oof.parquet")
    return root


def cut_in_half(file: Path) -> Path:
    """What a kill or a copy cut short leaves of ``file``: its first half."""
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    return file


# --- a tiny causal LM ---------------------------------------------------------------

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BASE_TEXT = [
    "Question: Answer: Context: Proposed answer: Is the proposed answer correct? "
    "Answer yes or no. yes no Yes No",
    "A. B. C. D. E. A B C D E",
    "yes\nno\nYes\nNo\nA\nB\nC\nD\nE",
]


def build_tiny_llama(
    folder: Path, texts: Iterable[str], *, chat: bool = True, seed: int = 0, vocab: int = 400
) -> Path:
    """Save a random tiny Llama + tokenizer that covers ``texts`` into ``folder``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    # Repeated so the template words and answer tokens are merged before anything else.
    bpe.train_from_iterator([*BASE_TEXT * 20, *texts], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _tiny_bpe(vocab: int) -> tuple[list[str], list[str]]:
    """A byte-level BPE trained on the template words: its tokens (by id) and merges."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(BASE_TEXT * 20, trainer)
    model = json.loads(bpe.to_str())["model"]
    tokens = [token for token, _ in sorted(model["vocab"].items(), key=lambda item: item[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges


def build_tiny_gguf(
    path: Path, arch: str = "qwen2", *, seed: int = 0, tied: bool = False, layers: int = 2
) -> Path:
    """Write a random tiny decoder GGUF (``qwen2`` or ``llama``) with a byte-level BPE
    tokenizer and a ChatML template, its matrices quantized (Q8_0, Q4_1) like a real file.

    Hidden 64, 4 heads over 2 KV heads, FFN 128; ``tied`` leaves out ``output.weight``.
    """
    from gguf import GGMLQuantizationType, GGUFWriter, TokenType
    from gguf.quants import quantize

    rng = np.random.default_rng(seed)
    tokens, merges = _tiny_bpe(320)
    hidden, ffn, heads, kv_heads = 64, 128, 4, 2
    kv = hidden // heads * kv_heads
    writer = GGUFWriter(str(path), arch)
    writer.add_name(f"tiny {arch}")
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [TokenType.CONTROL if t in SPECIALS else TokenType.NORMAL for t in tokens]
    )
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_pad_token_id(tokens.index("<|endoftext|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    def matrix(name: str, rows: int, cols: int, qtype: GGMLQuantizationType) -> None:
        data = rng.normal(0, 0.2, size=(rows, cols)).astype(np.float32)
        writer.add_tensor(name, quantize(data, qtype), raw_dtype=qtype)

    def vector(name: str, size: int, mean: float = 0.0) -> None:
        writer.add_tensor(name, (mean + rng.normal(0, 0.1, size=size)).astype(np.float32))

    q8, q4 = GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_1
    matrix("token_embd.weight", len(tokens), hidden, q8)
    if not tied:
        matrix("output.weight", len(tokens), hidden, q8)
    vector("output_norm.weight", hidden, 1.0)
    for block in range(layers):
        name = f"blk.{block}."
        vector(name + "attn_norm.weight", hidden, 1.0)
        matrix(name + "attn_q.weight", hidden, hidden, q4)
        matrix(name + "attn_k.weight", kv, hidden, q4)
        matrix(name + "attn_v.weight", kv, hidden, q8)
        matrix(name + "attn_output.weight", hidden, hidden, q8)
        if arch == "qwen2":
            vector(name + "attn_q.bias", hidden)
            vector(name + "attn_k.bias", kv)
            vector(name + "attn_v.bias", kv)
        vector(name + "ffn_norm.weight", hidden, 1.0)
        matrix(name + "ffn_gate.weight", ffn, hidden, q4)
        matrix(name + "ffn_up.weight", ffn, hidden, q8)
        matrix(name + "ffn_down.weight", hidden, ffn, q4)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --- a tiny Wikipedia and questions it answers --------------------------------------

WIKI_ARTICLES = {
    "Photosynthesis": "Photosynthesis is the process by which green plants use sunlight, water "
    "and carbon dioxide to make glucose. Chlorophyll in the chloroplasts absorbs light. "
    "Oxygen is released as a by-product.",
    "Mitochondrion": "The mitochondrion is the organelle that produces most of the cell's ATP "
    "through cellular respiration. It is often called the powerhouse of the cell.",
    "Plate tectonics": "Plate tectonics describes the slow motion of the lithosphere's plates. "
    "Earthquakes and volcanoes occur mainly along plate boundaries.",
    "Newton's laws of motion": "Newton's second law states that force equals mass times "
    "acceleration. The third law says every action has an equal and opposite reaction.",
    "DNA": "DNA is a double helix molecule that carries genetic information. Its bases are "
    "adenine, thymine, guanine and cytosine.",
    "Water cycle": "In the water cycle, water evaporates from oceans, condenses into clouds and "
    "falls as precipitation such as rain or snow.",
    "Electric current": "Electric current is the flow of electric charge, measured in amperes. "
    "Ohm's law relates voltage, current and resistance.",
    "Moon": "The Moon is Earth's only natural satellite. Its gravity causes the ocean tides.",
}
# question -> title of the WIKI_ARTICLES passage that answers it
WIKI_QUESTIONS = {
    "Which organelle makes most of the ATP in a cell?": "Mitochondrion",
    "What gas do plants release when they make glucose from sunlight?": "Photosynthesis",
    "What causes the ocean tides on Earth?": "Moon",
    "In which unit is electric current measured?": "Electric current",
}


def write_wiki(path: Path) -> Path:
    """WIKI_ARTICLES as a ``title``/``text`` JSONL corpus."""
    rows = [{"title": t, "text": x} for t, x in WIKI_ARTICLES.items()]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


DUMP_CONFIG = "20231101.en"


def write_wiki_dump(folder: Path, articles: pd.DataFrame, n_files: int = 3) -> Path:
    """``articles`` (``title``, ``text``) laid out as the Hugging Face Wikipedia dump
    (``wikimedia/wikipedia``): a README declaring the config, and
    ``<config>/train-0000k-of-0000n.parquet`` shards of ``id, url, title, text``.
    Returns the folder of shards (what `hf download ... --local-dir` leaves)."""
    shards = folder / DUMP_CONFIG
    shards.mkdir(parents=True)
    (folder / "README.md").write_text(
        f"---\nconfigs:\n- config_name: {DUMP_CONFIG}\n  data_files:\n  - split: train\n"
        f"    path: {DUMP_CONFIG}/train-*\n---\n"
    )
    table = pd.DataFrame(
        {
            "id": [str(1000 + i) for i in range(len(articles))],
            "url": [f"https://en.wikipedia.org/wiki/{i}" for i in range(len(articles))],
            "title": articles["title"].tolist(),
            "text": articles["text"].tolist(),
        }
    )
    for k in range(n_files):
        part = table.iloc[len(table) * k // n_files : len(table) * (k + 1) // n_files]
        part.to_parquet(shards / f"train-{k:05d}-of-{n_files:05d}.parquet", index=False)
    return shards


def wiki_questions(n_options: int = 3) -> pd.DataFrame:
    """WIKI_QUESTIONS' prompts with placeholder options and no answer, ids ``q0``..."""
    letters = "ABCDE"[:n_options]
    frame = pd.DataFrame({"id": [f"q{i}" for i in range(len(WIKI_QUESTIONS))]})
    frame["prompt"] = list(WIKI_QUESTIONS)
    for j, letter in enumerate(letters):
        frame[letter] = [f"option {j} of {i}" for i in range(len(WIKI_QUESTIONS))]
    frame["source"] = "handmade"
    return frame


def make_cross_encoder(folder: Path, words: Sequence[str]) -> Path:
    """A tiny random BERT cross-encoder (one relevance logit) over ``words``, saved."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    tokenizer = BertTokenizerFast(vocab_file=str(write_vocab(folder, words)))
    config = BertConfig(**tiny_sizes(words, hidden=16, layers=1), num_labels=1)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --- what sciqa infer writes --------------------------------------------------------


def load_logits(out_dir: Path) -> dict[str, np.ndarray]:
    """Every ``OUT_DIR/logits/<name>.npy`` of an infer run, by name (``ensemble`` too)."""
    return {f.stem: np.load(f) for f in sorted((out_dir / "logits").glob("*.npy"))}
