"""Typed configuration: one TOML or YAML file, overridden by ``--set section.key=value``.

Every default is listed once, here. Unknown keys are errors, so a typo never silently
falls back to a default. Later stages add their own section models.

>>> load_config(None, ["models.backbone=microsoft/deberta-v3-large"]).models.backbone
'microsoft/deberta-v3-large'
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sciqa.config_sources import apply_override, describe, flag_overrides, read_file
from sciqa.errors import ConfigError
from sciqa.layouts import MAPPABLE, is_mappable

DEFAULT = "default"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelsConfig(_Section):
    """Model names: ``default`` = the offline package-shipped asset (docs/assets.md),
    otherwise a local directory or a Hugging Face Hub name."""

    embedding: str = DEFAULT  # sentence-transformers encoder for retrieval
    backbone: str = DEFAULT  # AutoModelForMultipleChoice checkpoint, e.g. deberta-v3-large
    llm: str = "qwen"  # LLM that writes questions in data_gen; default = SmolLM2-135M
    reranker: str | None = None  # optional cross-encoder over fused retrieval hits; None = off


class DataConfig(_Section):
    """Inputs. Questions are a table file, a ``datasets`` save_to_disk folder
    (``FOLDER[@SPLIT]``) or ``hf:OWNER/NAME[:CONFIG][@SPLIT]`` (docs/inputs.md)."""

    corpus: str = DEFAULT  # articles: dir, file or hf:OWNER/NAME[:CONFIG]; default = packaged
    # How question tables map to the sciqa columns; auto = the one preset that fits
    layout: Literal["auto", "kaggle", "arc", "choices", "distractors"] = "auto"
    columns: dict[str, str] = {}  # sciqa column: input column, e.g. prompt: question (--columns)

    @field_validator("columns", mode="before")
    @classmethod
    def _column_pairs(cls, value: Any) -> Any:
        """``"prompt=question,A=opa"`` (a --columns/--set value) or a mapping."""
        if not isinstance(value, str):
            return value
        pairs = [item.partition("=") for item in value.split(",") if item.strip()]
        bad = [f"{k}{sep}{v}" for k, sep, v in pairs if not (sep and k.strip() and v.strip())]
        if bad:
            raise ValueError(f"{bad[0]!r} is not SCIQA_COLUMN=INPUT_COLUMN, e.g. prompt=question")
        return {k.strip(): v.strip() for k, _, v in pairs}

    @field_validator("columns")
    @classmethod
    def _known_targets(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = [name for name in value if not is_mappable(name)]
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not a column sciqa reads; {MAPPABLE}")
        return value


# --- Stage sections. Each stage owns its class below; keep one key per line with a
# one-line comment, defaults that run offline on a 2-core CPU.


class RetrievalConfig(_Section):
    """``sciqa index`` / ``sciqa retrieve``."""

    chunk_words: int = Field(200, ge=8)  # window size in words; articles split on sentences
    chunk_overlap: int = Field(50, ge=0)  # words repeated from the previous window, whole sentences
    min_chunk_words: int = Field(5, ge=1)  # drop passages shorter than this many words
    passage_template: str = "{title}\n{text}"  # text that is embedded and BM25-indexed
    query_template: str = "{prompt}\n{options}"  # query: question + options, as the winners did
    query_prefix: str = ""  # prepended to queries (e5: "query: ", bge: "Represent this ...: ")
    passage_prefix: str = ""  # prepended to passages (e5: "passage: ")
    batch_size: int = Field(64, ge=1)  # texts per encoder forward pass
    encode_block: int = Field(50_000, ge=1)  # passages embedded then added to faiss per step
    device: str | None = None  # encoder device; None = cuda if available, else cpu
    encode_devices: list[str] = []  # >1 entries: sentence-transformers multi-process pool
    faiss_factory: str = "Flat"  # faiss index_factory string, e.g. IVF4096,PQ96 / HNSW32
    train_sample: int = Field(200_000, ge=1)  # vectors to train IVF/PQ factories on
    nprobe: int = Field(32, ge=1)  # IVF lists visited per query (set at load time)
    ef_search: int = Field(128, ge=1)  # HNSW search breadth (set at load time)
    mmap: bool = True  # memory-map the faiss and BM25 files instead of reading them
    dense: bool = True  # use the dense retriever
    bm25: bool = True  # use the BM25 retriever
    bm25_method: Literal["lucene", "robertson", "atire", "bm25l", "bm25+"] = "lucene"  # variant
    bm25_k1: float = Field(1.5, gt=0)  # BM25 term-frequency saturation
    bm25_b: float = Field(0.75, ge=0, le=1)  # BM25 length normalisation
    bm25_stemmer: str | None = "english"  # PyStemmer language; None = no stemming
    bm25_stopwords: str | None = "en"  # bm25s stopword list; None = keep all words
    dense_candidates: int = Field(50, ge=1)  # dense hits per query fed to fusion
    bm25_candidates: int = Field(50, ge=1)  # BM25 hits per query fed to fusion
    dense_weight: float = Field(1.0, ge=0)  # reciprocal-rank-fusion weight of dense ranks
    bm25_weight: float = Field(1.0, ge=0)  # reciprocal-rank-fusion weight of BM25 ranks
    rrf_k: int = Field(60, ge=1)  # RRF constant: score = sum(weight / (rrf_k + rank))
    rerank_candidates: int = Field(20, ge=1)  # fused hits rescored when models.reranker is set
    k: int = Field(3, ge=1)  # passages joined into `context` (--k overrides)
    context_budget: int = Field(2000, ge=1)  # cap on the joined context, in context_unit
    context_unit: Literal["chars", "tokens"] = "chars"  # tokens = of models.backbone's tokenizer
    query_batch: int = Field(256, ge=1)  # queries searched per batch

    @model_validator(mode="after")
    def _consistent(self) -> RetrievalConfig:
        # Each of these would otherwise run, silently: an endless or empty chunking, or
        # fewer than k passages per question.
        if self.chunk_overlap >= self.chunk_words:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_words "
                f"({self.chunk_words}); lower retrieval.chunk_overlap"
            )
        if self.min_chunk_words > self.chunk_words:
            raise ValueError(
                f"min_chunk_words ({self.min_chunk_words}) is more than chunk_words "
                f"({self.chunk_words}): every passage would be dropped; lower it"
            )
        used = {"dense_candidates": self.dense_candidates} if self.dense else {}
        used |= {"bm25_candidates": self.bm25_candidates} if self.bm25 else {}
        if used and self.k > max(used.values()):
            fused = ", ".join(f"{key} {value}" for key, value in used.items())
            raise ValueError(
                f"k ({self.k}) is more than the hits fused ({fused}); raise those or lower k"
            )
        return self


class TrainConfig(_Section):
    """``sciqa train``."""

    folds: int = Field(5, ge=1)  # k of the k-fold split (stratified by answer, by source_id)
    max_length: int = Field(256, ge=8)  # tokens per (question + context, option); context is cut
    use_context: bool = True  # put the `context` column after the question when present
    epochs: float = Field(2.0, gt=0)  # passes over the training rows per fold
    learning_rate: float = Field(3e-5, gt=0)  # AdamW peak lr (Kaggle DeBERTa-v3-large: 5e-6..2e-5)
    lr_scheduler: str = "linear"  # transformers scheduler name: linear, cosine, constant, ...
    warmup_ratio: float = Field(0.1, ge=0, lt=1)  # share of the steps warming up (>= 1 = steps)
    batch_size: int = Field(8, ge=1)  # questions per device per step (each n_options sequences)
    eval_batch_size: int = Field(16, ge=1)  # questions per device per evaluation step
    grad_accum: int = Field(1, ge=1)  # gradient accumulation steps
    weight_decay: float = Field(0.01, ge=0)  # AdamW weight decay
    max_grad_norm: float = Field(1.0, ge=0)  # gradient clipping; 0 = none
    precision: str = "auto"  # auto (bf16 on a bf16 GPU, else fp32), fp32, bf16 or fp16 (GPU only)
    gradient_checkpointing: bool = False  # recompute activations: less memory, slower steps
    freeze_embeddings: bool = False  # keep the embedding layer fixed
    freeze_layers: int = Field(0, ge=0)  # keep the first N encoder layers fixed
    lora: bool = False  # train LoRA adapters (peft) instead of all weights; merged on save
    lora_r: int = Field(16, ge=1)  # LoRA rank
    lora_alpha: int = Field(32, ge=1)  # LoRA scaling numerator
    lora_dropout: float = Field(0.1, ge=0, lt=1)  # dropout on the LoRA path
    lora_target_modules: list[str] | None = None  # None = peft's default for the architecture
    group_by_length: bool = True  # batch questions of similar length: less padding
    heap_trim_steps: int = Field(10, ge=0)  # CPU: heap pages back to the OS every N steps; 0 = off
    early_stopping_patience: int = Field(2, ge=1)  # evaluations without a MAP@3 gain, then stop
    logging_steps: int = Field(50, ge=1)  # optimiser steps between loss log lines
    dataloader_workers: int = Field(0, ge=0)  # DataLoader worker processes
    report_to: list[str] = ["none"]  # HF Trainer trackers: tensorboard, mlflow ([track] extra)
    tokenize_cache: Path | None = None  # tokenized questions; None = ~/.cache/sciqa/tokenized

    @field_validator("report_to", mode="before")
    @classmethod
    def _trackers(cls, value: Any) -> list[str]:
        """``"tensorboard,mlflow"`` (a --set value) or a list; ``none`` alone means none."""
        names = value.split(",") if isinstance(value, str) else list(value)
        names = [str(n).strip().lower() for n in names if str(n).strip()] or ["none"]
        if "all" in names:
            # HF's "all" starts every tracker that happens to be installed, some online.
            raise ValueError("name the trackers (e.g. tensorboard,mlflow); 'all' is not allowed")
        if "none" in names and len(names) > 1:
            raise ValueError(f"'none' cannot be combined with {[n for n in names if n != 'none']}")
        return names


class InferConfig(_Section):
    """``sciqa infer``."""

    batch_size: int = Field(16, ge=1)  # questions per forward pass (x n_options sequences)
    max_length: int = Field(384, ge=8)  # tokens, for model dirs without sciqa_model.json
    use_context: bool = True  # append `context` to the question, for dirs without sciqa_model.json
    weights: str = "equal"  # "equal", "w1,w2,...", or fitted on the runs' oof.parquet: "auto"
    # (greedy MAP@3), "stack" (logistic stacking), "select" (the best by nested CV)
    ensemble: Literal["probs", "logits", "zscore"] = "probs"  # mean of probs/logits/z-scores
    tta: int = Field(1, ge=1)  # option-rotation passes per model (1 = no TTA)
    time_budget: str | None = None  # wall-clock limit such as "8h30m"; None = no limit
    budget_margin: float = Field(0.05, ge=0, lt=1)  # share of the budget kept in reserve
    device: str = "auto"  # "auto" (cuda if present, else cpu), "cpu", "cuda", "cuda:1", ...
    devices: list[str] | None = None  # data parallel: ["cuda:0", "cuda:1"] = a shard + copy each
    # auto: bf16/fp16 on GPU; fp32 on CPU, but a causal LM stored in bf16 stays bf16 there
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    attention: str = "sdpa"  # attn_implementation; falls back to "eager" where unsupported
    cascade_fraction: float = Field(1.0, gt=0, le=1)  # share of least-confident questions
    cascade_cheap: int = Field(0, ge=0)  # cheapest models that score every question; 0 = off
    cascade_expensive: list[str] = []  # model args/names run only on the unsure (e.g. llm:default)
    oof_labels: str | None = None  # labelled questions for --weights auto; None = the run's
    weight_rounds: int = Field(50, ge=1)  # greedy hill-climbing rounds for --weights auto
    weight_folds: int = Field(5, ge=2)  # outer folds of --weights select's nested CV


class CausalLMConfig(_Section):
    """Causal LMs as option scorers: ``sciqa infer Q llm:NAME`` and ``sciqa train`` with a
    causal ``models.backbone`` (docs/llm.md). Templates take {context}, {prompt}, and
    {options} (letter) or {option} (yes_no); a fine-tuned fold keeps the ones it used."""

    mode: Literal["cloze", "letter", "yes_no"] = "cloze"  # how an option is scored
    normalise: Literal["mean", "sum", "chars", "pmi"] = "mean"  # cloze: per token/total/char/PMI
    chat_template: Literal["auto", "on", "off"] = "auto"  # letter/yes_no: wrap in the chat template
    context_template: str = "Context: {context}\n\n"  # how retrieved context precedes the question
    cloze_template: str = "{context}Question: {prompt}\nAnswer:"  # the option follows it
    letter_template: str = "{context}Question: {prompt}\n{options}\nAnswer:"  # then a letter
    yes_no_template: str = (  # followed by the logit of yes minus no
        "{context}Question: {prompt}\nProposed answer: {option}\n"
        "Is the proposed answer correct? Answer yes or no.\nAnswer:"
    )
    max_length: int = Field(512, ge=16)  # tokens per scored sequence; only the context is cut
    use_context: bool = True  # put the `context` column before the question when present
    batch_size: int = Field(8, ge=1)  # questions per forward pass in infer (x options)
    prefix_cache: bool = True  # run context + question once, reuse its KV cache per option
    shared_head: bool = True  # with prefix_cache: run the prompt start all questions share once
    onednn_fp32: bool = True  # fp32 on CPU: linears through oneDNN (MKL runs AVX2 code on AMD)
    load_in: Literal["none", "8bit", "4bit"] = "none"  # bitsandbytes quantisation (CUDA only)
    device_map: str | None = None  # "auto": spread layers over all visible GPUs (accelerate)
    offload: Literal["none", "layers"] = "none"  # layers: stream one decoder layer at a time
    offload_group: int = Field(64, ge=1)  # layers: questions pushed through each loaded layer
    offload_activations: Literal["device", "cpu"] = "device"  # layers: where hidden states wait
    offload_prefetch: bool = True  # layers: read the next layer on a thread during this one
    offload_dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # layers: auto = infer.dtype
    offload_dir: Path | None = None  # layers: per-layer split cache; None = ~/.cache/sciqa/layers


# gen.science_filter defaults: words that mark a science passage (matched as whole words,
# case-insensitive, in title or text), and seed questions for the embedding filter.
SCIENCE_KEYWORDS = [
    *("physics", "chemistry", "biology", "astronomy", "geology", "mathematics", "energy"),
    *("atom", "molecule", "cell", "protein", "gene", "species", "evolution", "planet"),
    *("star", "galaxy", "quantum", "electron", "particle", "chemical", "element", "theorem"),
    *("equation", "mineral", "organism", "enzyme", "bacteria", "virus", "climate", "physical"),
]
SCIENCE_SEEDS = [
    "Which particle mediates the electromagnetic force?",
    "What process do plants use to convert light into chemical energy?",
    "Which property of a star determines its position on the main sequence?",
]


class GenConfig(_Section):
    """``sciqa gen``: question generation."""

    n: int = Field(8, ge=1)  # passages to generate from (--n overrides)
    questions_per_passage: int = Field(1, ge=1)  # requests (questions) per selected passage
    n_options: int = Field(5, ge=2, le=26)  # options per question; Kaggle has 5
    min_passage_words: int = Field(40, ge=0)  # skip passages shorter than this
    science_filter: Literal["off", "keywords", "embedding"] = "keywords"  # passage filter
    science_keywords: list[str] = SCIENCE_KEYWORDS  # any of these in title/text = science
    science_seed_questions: list[str] = SCIENCE_SEEDS  # for science_filter = embedding
    science_min_similarity: float = Field(0.25, ge=-1, le=1)  # embedding filter: cosine to a seed
    # Split by article (a hash of the title, the same for every seed and file): a test exam
    # and its training questions never share an article. all = no split.
    articles: Literal["all", "train", "test"] = "all"
    test_articles: float = Field(0.2, gt=0, lt=1)  # share of the articles in the test split
    prompts: str = DEFAULT  # templates YAML; default = configs/gen_prompts[_answer_first].yaml
    # The reply's keys: letters (A..E + "answer") or answer_first (the key's text, then the
    # distractors; sciqa places the key at a letter), docs/data_gen.md
    reply_layout: Literal["letters", "answer_first"] = "answer_first"
    response_format: Literal["json_schema", "json_object", "text"] = "json_schema"  # first try
    temperature: float = Field(0.7, ge=0)  # sampling temperature sent to the LLM
    presence_penalty: float = Field(0.0, ge=-2, le=2)  # OpenAI-standard; 0 = not sent (Qwen
    # at 1.5 writes stray words); SmolLM2-135M needs 1.5 or its options repeat
    frequency_penalty: float = Field(0.0, ge=-2, le=2)  # OpenAI-standard; 0 = not sent
    repetition_penalty: float | None = Field(None, gt=0)  # vLLM/llama.cpp only; None = not sent
    max_question_chars: int = Field(300, ge=8)  # maxLength of the question in the reply schema
    max_option_chars: int = Field(150, ge=1)  # maxLength of each option in the reply schema
    question_pattern: str | None = r"^\w.*$"  # JSON-schema pattern: starts with a letter/digit
    option_pattern: str | None = r"^\w.*$"  # the same for every option; "" = no pattern
    max_tokens: int = Field(400, ge=16)  # reply token limit; replies cut by it are rejected
    reask_budget: int = Field(1, ge=0)  # extra requests per question when a reply is invalid
    max_requests: int | None = Field(None, ge=0)  # stop after sending this many new requests
    max_cost: float | None = Field(None, ge=0)  # stop once new requests cost this much (USD)
    cache: Path | None = None  # request cache (SQLite); None = <OUT stem>.cache.sqlite
    max_questions: int | None = Field(None, ge=1)  # keep the first N that pass (passage
    # order), before letters are balanced: nested sets from one --n; None = all
    balance_letters: bool = True  # shuffle options so answer letters are balanced
    dedup: bool = True  # drop exact and near-duplicate questions
    near_dup_threshold: float = Field(0.92, ge=0, le=1)  # embedding cosine = duplicate/leak
    answerability_filter: bool = True  # drop if the scorer with the passage misses the answer
    answerable_confidence: float = Field(0.5, ge=0, le=1)  # with passage: p(label) below = drop
    too_easy_filter: bool = True  # drop if the scorer without the passage is confident
    too_easy_confidence: float = Field(0.6, ge=0, le=1)  # probability counted as too easy
    scorer: str = "llm:qwen"  # llm:NAME (letter judge), zero_shot (embedding cosines), a model dir
    scorer_temperature: float = Field(0.05, gt=0)  # softmax temperature on zero-shot cosines
    scorer_dtype: Literal["auto", "fp32", "bf16"] = "auto"  # llm: judge; auto = bf16 where native
    scorer_max_length: int = Field(1024, ge=16)  # llm: judge tokens per prompt; passage cut first
    scorer_batch_size: int = Field(4, ge=1)  # llm: judge questions per forward pass
    batch_poll_seconds: float = Field(30.0, gt=0)  # --batch: seconds between status polls
    source_license: str = "cc-by-sa-4.0"  # the passages' licence (Hub id), in gen's card
    # Bias audit of the kept questions (sciqa/evaluation/audit.py, docs/audit.md); `sciqa audit`.
    audit_action: Literal["report", "drop", "rebalance"] = "report"  # flagged: count/drop/trim
    audit_shortcuts: list[Literal["longest", "question_overlap", "passage_overlap"]] = [
        "longest",
        "question_overlap",
    ]  # shortcuts that drop/rebalance act on (all three are reported)
    audit_length_ratio: float = Field(1.5, gt=1)  # flag: correct option this x longer than any
    audit_overlap_margin: int = Field(2, ge=1)  # flag: this many more shared words than any

    @field_validator("scorer")
    @classmethod
    def _scorer_name(cls, value: str) -> str:
        # A judge's prompt comes from the causal_lm section; infer-style ?key=value
        # overrides would be a second, partial way to set it.
        if value.startswith("llm:") and "?" in value:
            raise ValueError(
                f"{value!r}: an llm: judge takes no ?key=value overrides; set the "
                "causal_lm.letter_template / context_template / chat_template keys instead"
            )
        return value

    @field_validator("question_pattern", "option_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        # The engine compiles its own dialect (and says which field it cannot); Python's
        # re checks replies from servers that do not enforce the schema. "" = no pattern.
        if not value:
            return None
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class LLMConfig(_Section):
    """The OpenAI-compatible endpoint ``sciqa gen`` talks to."""

    base_url: str = DEFAULT  # default = start the embedded engine (llm.server) locally
    model: str = DEFAULT  # name sent to the endpoint; default = the served models.llm
    backend: Literal["auto", "openai", "vllm", "llama-server", "ollama", "llama-cpp-python"] = (
        "auto"  # how to ask for structured output; auto = ask the server (GET /models)
    )
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key
    timeout: float = Field(300.0, gt=0)  # seconds per HTTP request (SmolLM2 on 2 cores is slow)
    concurrency: int = Field(8, ge=1)  # requests in flight at once
    rpm: int | None = Field(None, ge=1)  # requests per minute limit; None = unlimited
    tpm: int | None = Field(None, ge=1)  # tokens per minute limit (estimated); None = unlimited
    sdk_retries: int = Field(2, ge=0)  # openai SDK retries (honour Retry-After)
    backoff_retries: int = Field(4, ge=0)  # our retries on 429/5xx/timeouts after the SDK's
    backoff_base: float = Field(1.0, ge=0)  # first backoff in seconds, doubled each time
    backoff_max: float = Field(60.0, ge=0)  # longest single backoff in seconds
    price_input_per_1k: float = Field(0.0, ge=0)  # USD per 1k prompt tokens (0.00015 4o-mini)
    price_output_per_1k: float = Field(0.0, ge=0)  # USD per 1k completion tokens (0.0006)
    server_port: int = Field(0, ge=0, le=65535)  # embedded server port; 0 = a free one
    server_startup_timeout: float = Field(600.0, gt=0)  # seconds to wait for /health
    server_cache_dir: Path | None = None  # converted GGUF folder; None = ~/.cache/sciqa/llm
    server: Literal["vllm", "transformers"] = "vllm"  # embedded engine (transformers: no batching)
    engine_env: str = DEFAULT  # venv with vllm-cpu; default = .venv-engine (`make engine`)
    engine_compile: bool = True  # torch.compile at start: ~1-4 min more, ~3x faster generation
    engine_max_model_len: int = Field(4096, ge=256)  # tokens per request (prompt + reply)
    engine_kv_cache_gb: float = Field(2.0, gt=0)  # VLLM_CPU_KVCACHE_SPACE: KV cache RAM in GiB


# What Kaggle's Python image already has (its installed-package list of 2026-06), of what
# sciqa infer needs: pack leaves these out of BUNDLE/wheels, with all they alone depend on.
KAGGLE_PACKAGES = [
    *("torch", "transformers", "tokenizers", "safetensors", "huggingface-hub", "accelerate"),
    *("peft", "sentence-transformers", "scikit-learn", "scipy", "numpy", "pandas", "pyarrow"),
    *("pydantic", "pyyaml", "typer", "tqdm", "requests", "sentencepiece", "packaging"),
]


class PackConfig(_Section):
    """``sciqa pack``: a bundle for an offline machine (docs/kaggle.md)."""

    python: str = Field("3.12", pattern=r"^3\.\d+$")  # target Python (Kaggle image: 3.12)
    platforms: list[str] = ["manylinux_2_35_x86_64"]  # pip --platform tags; older manylinux added
    exclude: list[str] = KAGGLE_PACKAGES  # already on the target: left out of wheels/
    requirements: list[str] = []  # more packages to bundle, beyond what sciqa infer needs
    pip_args: list[str] = []  # extra pip arguments for resolving/downloading, e.g. --index-url
    sciqa_wheel: str | None = None  # a built sciqa wheel; None = build one from this checkout


class SciqaConfig(_Section):
    runs_dir: Path = Path("runs")  # every run writes runs/<stage>/<name>/
    seed: int = Field(42, ge=0, le=2**32 - 1)  # one seed for folds, sampling and model init
    models: ModelsConfig = ModelsConfig()
    data: DataConfig = DataConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    train: TrainConfig = TrainConfig()
    infer: InferConfig = InferConfig()
    causal_lm: CausalLMConfig = CausalLMConfig()
    gen: GenConfig = GenConfig()
    llm: LLMConfig = LLMConfig()
    pack: PackConfig = PackConfig()


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: list[str] | None = None,
    flags: Mapping[str, tuple[str, Any]] | None = None,
) -> SciqaConfig:
    """Defaults, then ``path`` (TOML/YAML), then each ``overrides`` item in order, then the
    command's ``flags`` ({flag: (config key, value)}, see :func:`flag_overrides`): the one
    place where a command line changes the config, before it is validated."""
    data = read_file(Path(path)) if path is not None else {}
    for override in [*(overrides or []), *flag_overrides(flags)]:
        apply_override(data, override)
    source = str(path) if path is not None else "config"
    try:
        return SciqaConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe(exc, source, flags or {})) from None


def dump_config(config: SciqaConfig) -> str:
    """YAML of the resolved config, as written next to every run's outputs."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
