"""Models and questions for ``benchmarks/gpu_check.py``, built from configs (no download).

- Questions: 5 options, a context long enough to be cut at ``max_length`` (as retrieved
  Wikipedia context was on Kaggle), made of pseudo-words from a fixed seed.
- The multiple-choice model: ``DebertaV2ForMultipleChoice`` with the shape of
  ``microsoft/deberta-v3-large`` (24 layers, hidden 1024, vocab 128100), random weights,
  and a word-level tokenizer over the pseudo-words with DeBERTa's ``[CLS] a [SEP] b [SEP]``
  pairs, saved as a model directory ``AutoTokenizer`` loads.
- The causal member: ``LlamaForCausalLM`` of a named shape (``7b`` = Llama-2-7B), random
  weights, with a byte-level BPE tokenizer trained on the pseudo-words (it must decode, for
  context cutting, and prepends ``<s>`` as Llama's does).

>>> len(pseudo_words(50)), pseudo_words(3) == pseudo_words(3)
(50, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

LETTERS = list("ABCDE")
MC_SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]  # DeBERTa-v3's ids 0..3
PUNCTUATION = [".", "?", ","]
# microsoft/deberta-v3-large's config.json, random weights.
DEBERTA_V3_LARGE = {
    "vocab_size": 128100,
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
}
DEBERTA_V3_LAYOUT = {  # what makes it v3 rather than BERT: relative attention, no types
    "hidden_act": "gelu",
    "max_position_embeddings": 512,
    "type_vocab_size": 0,
    "layer_norm_eps": 1e-7,
    "relative_attention": True,
    "max_relative_positions": -1,
    "position_buckets": 256,
    "norm_rel_ebd": "layer_norm",
    "share_att_key": True,
    "pos_att_type": ["p2c", "c2p"],
    "position_biased_input": False,
    "pooler_hidden_act": "gelu",
    "pooler_dropout": 0.0,
    "pad_token_id": 0,
}
LLAMA_SHAPES = {  # hidden, intermediate, layers, heads, kv heads, vocab
    "7b": (4096, 11008, 32, 32, 32, 32000),  # Llama-2-7B
    "3b": (3200, 8640, 26, 32, 32, 32000),  # OpenLLaMA-3B
    "1b": (2048, 5632, 22, 32, 4, 32000),  # TinyLlama-1.1B
    "tiny": (32, 64, 2, 4, 2, 0),  # smoke; vocab 0 = the tokenizer's size
}
PROMPT_WORDS = "Question Answer Context Proposed answer Is the proposed answer correct yes no"


@dataclass(frozen=True)
class Sizes:
    """How big everything is: the GPU check or its CPU smoke run."""

    mc: dict[str, int]  # DebertaV2Config sizes; vocab_size 0 = the tokenizer's size
    max_length: int  # tokens per (question + context, option) sequence
    context_words: int  # words of context per question, before cutting
    n_train: int  # training questions (train bf16 / fp16)
    n_valid: int  # validation questions
    n_test: int  # questions the multiple-choice model infers
    n_torchrun: int  # training questions of the torchrun launch
    n_llm: int  # questions the causal member scores
    words: int = 3000  # pseudo-words in the vocabularies
    overrides: list[str] = field(default_factory=list)  # config keys set in every step


# infer_kaggle.toml lists both T4s; the check's machine has one GPU.
GPU = Sizes(DEBERTA_V3_LARGE, 512, 600, 128, 16, 256, 16, 64, overrides=["infer.devices=[cuda:0]"])
SMOKE = Sizes(
    {"vocab_size": 0, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
     "intermediate_size": 64},
    96, 120, 16, 8, 16, 8, 8, words=400,
    # The GPU recipe freezes 18 of 24 layers; the smoke model has 2.
    overrides=["train.freeze_layers=1", "train.max_length=96", "infer.max_length=96",
               "infer.device=auto", "infer.devices=[cpu]", "causal_lm.max_length=96"],
)  # fmt: skip


def pseudo_words(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct pronounceable lower-case words, the same for the same seed."""
    rng = np.random.default_rng(seed)
    onsets = "b c d f g h k l m n p r s t v z br cr dr fl gr pl st tr".split()  # noqa: SIM905
    vowels = "a e i o u ai ea io ou".split()  # noqa: SIM905
    words: dict[str, None] = {}
    while len(words) < n:
        syllables = int(rng.integers(1, 4))
        words["".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(syllables))] = None
    return list(words)


def _sentence(rng: np.random.Generator, words: list[str], n: int) -> str:
    return " ".join(rng.choice(words, n))


def make_questions(n: int, sizes: Sizes, seed: int) -> pd.DataFrame:
    """``n`` labelled 5-option questions with long contexts (balanced answer letters)."""
    rng = np.random.default_rng(seed)
    words = pseudo_words(sizes.words)
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"id": f"q{seed}-{i:05d}"}
        row["prompt"] = _sentence(rng, words, int(rng.integers(10, 25))) + " ?"
        for letter in LETTERS:
            row[letter] = _sentence(rng, words, int(rng.integers(1, 7)))
        row["answer"] = LETTERS[i % len(LETTERS)]
        sentences = [_sentence(rng, words, 12) for _ in range(sizes.context_words // 12)]
        row["context"] = " . ".join(sentences) + " ."
        rows.append(row)
    return pd.DataFrame(rows)


def mc_tokenizer(words: list[str]) -> Any:
    """A word-level fast tokenizer with DeBERTa's special tokens and pair template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*MC_SPECIALS, *PUNCTUATION, *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        unk_token="[UNK]",
        mask_token="[MASK]",
        model_max_length=512,
    )


def causal_tokenizer(words: list[str], vocab_size: int) -> Any:
    """A byte-level BPE trained on the pseudo-words that prepends ``<s>``, like Llama's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<unk>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = " ".join(words) + " . ? , : " + PROMPT_WORDS
    core.train_from_iterator([text] * 20, trainer)
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 0)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def n_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def mc_model(sizes: Sizes, vocab: int, device: str) -> Any:
    """A random ``DebertaV2ForMultipleChoice`` of ``sizes.mc`` (vocab 0 = ``vocab``)."""
    import torch
    from transformers import DebertaV2Config, DebertaV2ForMultipleChoice

    shape = dict(sizes.mc)
    shape["vocab_size"] = shape["vocab_size"] or vocab
    config = DebertaV2Config(**shape, **DEBERTA_V3_LAYOUT)
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU: seconds instead of a minute
        return DebertaV2ForMultipleChoice(config)


def build_mc(folder: Path, sizes: Sizes, device: str) -> int:
    """Save a random DeBERTa-v3-shaped multiple-choice model + tokenizer; its parameters."""
    tokenizer = mc_tokenizer(pseudo_words(sizes.words))
    model = mc_model(sizes, len(tokenizer), device)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return n_params(model)


def llm_model(shape: str, tokenizer: Any, device: str) -> Any:
    """A random ``LlamaForCausalLM`` of ``shape``, in bf16 on a GPU (fp32 elsewhere)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, ffn, layers, heads, kv_heads, vocab = LLAMA_SHAPES[shape]
    config = LlamaConfig(
        vocab_size=vocab or len(tokenizer),
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # a 7B model is 13.5 GB in bf16, 27 GB in fp32
    try:
        with torch.device(device):
            return LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)


def build_llm(folder: Path, shape: str, sizes: Sizes, device: str) -> int:
    """Save a random Llama of ``shape`` + tokenizer; its parameters."""
    words = pseudo_words(sizes.words)
    tokenizer = causal_tokenizer(words, len(words) + 600)
    model = llm_model(shape, tokenizer, device)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return n_params(model)
