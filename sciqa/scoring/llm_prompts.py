"""Questions -> token ids for scoring options with a causal LM, the same in train and infer.

Every question becomes one shared *prefix* (context + question, and in ``letter`` mode the
listed options) and, per option, a *suffix*:

- ``cloze``: suffix = the option text; its score is the log-probability of those tokens
  given the prefix, normalised per token (``mean``), not at all (``sum``), per character,
  or (``pmi``) minus their log-probability after the bare answer cue ("Answer:"), which
  removes how likely an option's wording is in itself (Holtzman et al., 2021).
- ``yes_no``: suffix = the option + the rest of the template; its score is the logit of
  "yes" minus "no" after it.
- ``letter``: no suffix; the option letters' logits after the prefix are the scores.

Splitting prefix from suffix is what lets ``sciqa.scoring.llm_scoring`` run the prefix once and
reuse its KV cache for every option. Suffix ids are the tail of the tokenized prefix +
suffix text, so the scored tokens are exactly those of the joint text. Only the context is
ever truncated to fit ``max_length``; the question and the options are kept whole.

The tokenizer is passed in, so this module needs no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import pandas as pd

from sciqa.errors import SciqaError
from sciqa.schema import ANSWER, CONTEXT, PROMPT, option_letters

MODES = ("cloze", "letter", "yes_no")
OPTION_SLOT = "\u0000OPTION\u0000"  # stands for the option while the yes_no prompt is rendered
CONTEXT_MARGIN = 4  # tokens kept free when the context is cut: re-tokenizing may shift a few


class LLMPromptError(SciqaError):
    """The tokenizer or template cannot express the configured scoring mode."""


@dataclass(frozen=True)
class PromptSpec:
    """How one causal LM turns a question into prefix/suffix ids; saved with a trained fold."""

    mode: str = "cloze"
    normalise: str = "mean"
    chat: bool = False  # wrap the prompt in the tokenizer's chat template
    context_template: str = "Context: {context}\n\n"
    template: str = "{context}Question: {prompt}\nAnswer:"
    max_length: int = 512
    use_context: bool = True

    @classmethod
    def from_config(cls, cfg: Any, tokenizer: Any, name: str) -> PromptSpec:
        """Resolve ``causal_lm`` config against the tokenizer (``chat_template = auto``)."""
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        if cfg.mode != "cloze" and cfg.chat_template == "on" and not has_chat:
            raise LLMPromptError(
                f"{name}: causal_lm.chat_template = 'on' but its tokenizer has no chat "
                "template; set causal_lm.chat_template=off or auto"
            )
        chat = cfg.mode != "cloze" and (
            cfg.chat_template == "on" or (cfg.chat_template == "auto" and has_chat)
        )
        template = {
            "cloze": cfg.cloze_template,
            "letter": cfg.letter_template,
            "yes_no": cfg.yes_no_template,
        }[cfg.mode]
        return cls(
            mode=cfg.mode,
            normalise=cfg.normalise,
            chat=chat,
            context_template=cfg.context_template,
            template=template,
            max_length=cfg.max_length,
            use_context=cfg.use_context,
        )

    def to_meta(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> PromptSpec:
        return cls(**{k: meta[k] for k in cls.__dataclass_fields__ if k in meta})


@dataclass
class LLMEncoded:
    """Token ids of every question, for ``sciqa.scoring.llm_scoring``."""

    mode: str
    prefixes: list[list[int]]
    suffixes: list[list[list[int]]]  # [question][option] -> ids; empty lists in letter mode
    norms: list[list[float]]  # cloze divisor per option (1 for sum, tokens, or characters)
    labels: list[int] | None
    n_options: int
    uncond_prefix: list[int] = field(default_factory=list)  # pmi: the bare answer cue
    uncond_suffixes: list[list[list[int]]] = field(default_factory=list)  # pmi: options after it
    answer_ids: list[int] = field(default_factory=list)  # letter: one token per option letter
    yes_ids: list[int] = field(default_factory=list)  # yes_no: single-token spellings of yes
    no_ids: list[int] = field(default_factory=list)
    truncated: int = 0  # questions whose context was cut to fit max_length
    overlong: int = 0  # questions over max_length even without context (kept whole)
    cut_rows: list[int] = field(default_factory=list)  # positions of the `truncated` ones
    overlong_rows: list[int] = field(default_factory=list)  # positions of the `overlong` ones

    @property
    def lengths(self) -> list[int]:
        """Tokens of the longest full sequence per question: drives sorting and cost."""
        return [
            len(p) + max((len(s) for s in sufs), default=0)
            for p, sufs in zip(self.prefixes, self.suffixes, strict=True)
        ]

    @cached_property
    def shared_head(self) -> int:
        """Leading tokens every prefix starts with (a chat template's system prompt, the
        instructions): ``sciqa.scoring.shared_head`` runs them once per model."""
        return common_head(self.prefixes)

    def __len__(self) -> int:
        return len(self.prefixes)


def common_head(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token run all of ``seqs`` start with, less what would leave
    one of them empty: each keeps a last token of its own, whose logits are the scores.

    >>> common_head([[1, 2, 3, 4], [1, 2, 5]]), common_head([[1, 2], [1, 2]]), common_head([])
    (2, 1, 0)
    """
    if not seqs:
        return 0
    shared = 0
    for column in zip(*seqs, strict=False):
        if len(set(column)) > 1:
            break
        shared += 1
    return max(min(shared, min(len(s) for s in seqs) - 1), 0)


def _render(spec: PromptSpec, tokenizer: Any, prompt: str, context: str, options: str) -> str:
    block = spec.context_template.format(context=context) if context else ""
    text = spec.template.format(context=block, prompt=prompt, options=options, option=OPTION_SLOT)
    if spec.chat:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    return text


def _split(spec: PromptSpec, text: str, option: str) -> tuple[str, str]:
    """(prefix text, suffix text) for one option of a rendered prompt."""
    if spec.mode == "yes_no":
        head, _, tail = text.partition(OPTION_SLOT)
        return head, option + tail
    if spec.mode == "cloze":
        return text, option if text[-1:].isspace() else " " + option
    return text, ""


def _tail_ids(
    tokenizer: Any,
    heads: list[str],
    fulls: list[str],
    special: bool,
    head_ids: list[list[int]] | None = None,
) -> list[list[int]]:
    """Ids of ``full[len(head):]`` as tokenized inside the joint text (``head_ids``: the
    heads already tokenized, so a prefix shared by several options is tokenized once)."""
    if head_ids is None:
        head_ids = tokenizer(heads, add_special_tokens=special)["input_ids"]
    full_ids = tokenizer(fulls, add_special_tokens=special)["input_ids"]
    tails = []
    for head, full, h_ids, f_ids in zip(heads, fulls, head_ids, full_ids, strict=True):
        if f_ids[: len(h_ids)] == h_ids:
            tails.append(f_ids[len(h_ids) :])
        else:  # a token merged across the boundary: tokenize the tail on its own
            tails.append(tokenizer(full[len(head) :], add_special_tokens=False)["input_ids"])
    return tails


def _single_tokens(tokenizer: Any, text: str, words: Sequence[str], name: str) -> list[int]:
    """The one-token id of each of ``words`` right after ``text``; refuses split words."""
    sep = "" if text[-1:].isspace() else " "
    ids = _tail_ids(tokenizer, [text] * len(words), [text + sep + w for w in words], False)
    for word, tail in zip(words, ids, strict=True):
        if len(tail) != 1:
            pieces = tokenizer.convert_ids_to_tokens(tail)
            raise LLMPromptError(
                f"{name}: the tokenizer splits {sep + word!r} into {len(tail)} tokens "
                f"{pieces}; letter/yes_no scoring needs one token each, use causal_lm.mode=cloze"
            )
    return [tail[0] for tail in ids]


def _yes_no_ids(tokenizer: Any, text: str, name: str) -> tuple[list[int], list[int]]:
    """Every single-token spelling ("yes", "Yes", with or without a space) of yes and no."""
    found: dict[str, list[int]] = {}
    for word in ("yes", "no"):
        ids: list[int] = []
        for variant in (word, word.capitalize()):
            for sep in ("", " "):
                tail = _tail_ids(tokenizer, [text], [text + sep + variant], False)[0]
                if len(tail) == 1 and tail[0] not in ids:
                    ids.append(tail[0])
        if not ids:
            raise LLMPromptError(
                f"{name}: no spelling of {word!r} is a single token of its tokenizer; "
                "use causal_lm.mode=cloze"
            )
        found[word] = ids
    return found["yes"], found["no"]


def _check_template(spec: PromptSpec) -> None:
    """Refuse a template with unknown fields, or without the field its mode needs."""
    needs = {"letter": "{options}", "yes_no": "{option}"}.get(spec.mode)
    key = f"causal_lm.{spec.mode}_template"
    try:
        spec.template.format(context="", prompt="", options="", option="")
        spec.context_template.format(context="")
    except (KeyError, IndexError, ValueError) as exc:
        raise LLMPromptError(
            f"{key} / causal_lm.context_template: bad field {exc}; templates may use "
            "{context}, {prompt}, {options} (letter) and {option} (yes_no)"
        ) from None
    if needs and needs not in spec.template:
        raise LLMPromptError(f"{key} must contain {needs}: {spec.template!r}")


def _contexts(frame: pd.DataFrame, use_context: bool) -> list[str]:
    if not use_context or CONTEXT not in frame.columns:
        return [""] * len(frame)
    return [c.strip() for c in frame[CONTEXT].fillna("").astype(str)]


def encode_for_llm(
    tokenizer: Any,
    frame: pd.DataFrame,
    spec: PromptSpec,
    *,
    letters: Sequence[str] | None = None,
    name: str = "model",
) -> LLMEncoded:
    """Prefix and suffix ids of every question in a schema-valid ``frame``."""
    if spec.mode not in MODES:
        raise LLMPromptError(f"causal_lm.mode = {spec.mode!r}: use one of {', '.join(MODES)}")
    if spec.chat and not getattr(tokenizer, "chat_template", None):
        raise LLMPromptError(
            f"{name}: its tokenizer has no chat template, which this prompt needs; "
            "set causal_lm.chat_template=off"
        )
    _check_template(spec)
    letters = list(letters or option_letters(frame.columns))
    n = len(letters)
    prompts = frame[PROMPT].astype(str).tolist()
    options = frame[letters].astype(str).to_numpy()
    contexts = _contexts(frame, spec.use_context)
    special = not spec.chat  # a rendered chat template already holds its special tokens

    def encode_rows(rows: list[int]) -> dict[int, tuple[list[int], list[list[int]]]]:
        texts = {
            i: _render(
                spec,
                tokenizer,
                prompts[i],
                contexts[i],
                "\n".join(f"{L}. {o}" for L, o in zip(letters, options[i], strict=True)),
            )
            for i in rows
        }
        parts = {i: [_split(spec, texts[i], str(o)) for o in options[i]] for i in rows}
        heads = [parts[i][0][0] for i in rows]
        prefix_ids = tokenizer(heads, add_special_tokens=special)["input_ids"]
        out: dict[int, tuple[list[int], list[list[int]]]] = {}
        if spec.mode == "letter":
            return {
                i: (ids, [[] for _ in range(n)]) for i, ids in zip(rows, prefix_ids, strict=True)
            }
        flat_heads = [h for i in rows for h, _ in parts[i]]
        flat_fulls = [h + s for i in rows for h, s in parts[i]]
        flat_ids = [ids for ids in prefix_ids for _ in range(n)]
        tails = _tail_ids(tokenizer, flat_heads, flat_fulls, special, flat_ids)
        for k, (i, ids) in enumerate(zip(rows, prefix_ids, strict=True)):
            out[i] = (ids, tails[k * n : (k + 1) * n])
        return out

    encoded = encode_rows(list(range(len(frame))))
    cut_rows, overlong_rows = [], []
    for i, (prefix, suffixes) in list(encoded.items()):
        total = len(prefix) + max((len(s) for s in suffixes), default=0)
        if total <= spec.max_length:
            continue
        if contexts[i]:
            cut_rows.append(i)
            for _ in range(3):  # re-tokenizing a cut context can shift a token or two
                ctx_ids = tokenizer(contexts[i], add_special_tokens=False)["input_ids"]
                keep = len(ctx_ids) - (total - spec.max_length) - CONTEXT_MARGIN
                contexts[i] = tokenizer.decode(ctx_ids[:keep]).strip() if keep > 0 else ""
                prefix, suffixes = encode_rows([i])[i]
                total = len(prefix) + max((len(s) for s in suffixes), default=0)
                if total <= spec.max_length or not contexts[i]:
                    break
            encoded[i] = (prefix, suffixes)
        if total > spec.max_length:
            overlong_rows.append(i)

    prefixes = [encoded[i][0] for i in range(len(frame))]
    suffixes = [encoded[i][1] for i in range(len(frame))]
    norms = [
        [_norm(spec.normalise, len(ids), len(str(opt))) for ids, opt in zip(sufs, row, strict=True)]
        for sufs, row in zip(suffixes, options, strict=True)
    ]
    labels = None
    if ANSWER in frame.columns and frame[ANSWER].astype(bool).all():
        index = {letter: k for k, letter in enumerate(letters)}
        labels = [index[a] for a in frame[ANSWER]]
    result = LLMEncoded(spec.mode, prefixes, suffixes, norms, labels, n)
    result.truncated, result.overlong = len(cut_rows), len(overlong_rows)
    result.cut_rows, result.overlong_rows = cut_rows, overlong_rows
    if spec.mode == "cloze" and spec.normalise == "pmi" and len(frame):
        result.uncond_prefix, result.uncond_suffixes = _unconditional(
            tokenizer, prefixes[0], options, special
        )
    first = _render(spec, tokenizer, prompts[0], "", "") if len(frame) else ""
    if spec.mode == "letter" and len(frame):
        result.answer_ids = _single_tokens(tokenizer, first, letters, name)
    if spec.mode == "yes_no" and len(frame):
        probe = first.replace(OPTION_SLOT, str(options[0][0]))
        result.yes_ids, result.no_ids = _yes_no_ids(tokenizer, probe, name)
    return result


def _unconditional(
    tokenizer: Any, prefix_ids: list[int], options: Any, special: bool
) -> tuple[list[int], list[list[list[int]]]]:
    """The answer cue alone (the prefix's last line) and every option's ids after it."""
    cue = tokenizer.decode(prefix_ids, skip_special_tokens=True).rsplit("\n", 1)[-1]
    flat = [str(o) for row in options for o in row]
    fulls = [cue + (o if cue[-1:].isspace() else " " + o) for o in flat]
    tails = _tail_ids(tokenizer, [cue] * len(flat), fulls, special)
    n = options.shape[1]
    cue_ids = tokenizer(cue, add_special_tokens=special)["input_ids"]
    return cue_ids, [tails[i : i + n] for i in range(0, len(tails), n)]


def _norm(normalise: str, n_tokens: int, n_chars: int) -> float:
    """Divisor of an option's summed log-probability.

    >>> _norm("mean", 3, 10), _norm("chars", 3, 10), _norm("sum", 3, 10)
    (3.0, 10.0, 1.0)
    """
    if normalise == "mean":
        return float(max(n_tokens, 1))
    if normalise == "chars":
        return float(max(n_chars, 1))
    return 1.0
