"""A tiny random ``LlamaForCausalLM`` with a byte-level BPE tokenizer, built in the test.

No download: the tokenizer is trained on a few sentences (so " A", " yes" are single
tokens, as in real GPT-style vocabularies) and the model has a few thousand parameters.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

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
