"""Fixtures the data_gen tests share: the API key, a passages file, gen against the fake
server (data_gen.fake_server) as a config, as ``sciqa gen`` options and as a run, and a
hashing encoder that stands in for MiniLM."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from data_gen.commands import run_gen
from data_gen.fake_server import FakeLLM, write_fake_passages
from sciqa.config import SciqaConfig
from tests.builders import make_config

# gen against the fake server, fast: no SDK retries, short backoffs, no filter that loads
# a model (the tests that want one switch it on and pass a fake).
FAST = (
    "llm.model=fake-model",
    "llm.sdk_retries=0",
    "llm.backoff_base=0.01",
    "llm.timeout=5",
    "gen.dedup=false",
    "gen.answerability_filter=false",
    "gen.too_easy_filter=false",
)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")


@pytest.fixture
def passages_file(tmp_path: Path) -> Path:
    """Six science passages ``p0``..``p5`` titled ``T0``..``T5``."""
    return write_fake_passages(tmp_path / "passages.parquet", 6)


@pytest.fixture
def fake_config() -> Callable[..., SciqaConfig]:
    """``fake_config(base_url, *overrides)``: the config of a fast run against base_url."""

    def build(base_url: str, *overrides: str) -> SciqaConfig:
        return make_config(f"llm.base_url={base_url}", *FAST, *overrides)

    return build


@pytest.fixture
def fake_args() -> Callable[..., list[str]]:
    """``fake_args(base_url, *overrides)``: the same as ``sciqa gen`` options (``--set``)."""

    def build(base_url: str, *overrides: str) -> list[str]:
        return [
            a for item in (f"llm.base_url={base_url}", *FAST, *overrides) for a in ("--set", item)
        ]

    return build


@pytest.fixture
def run_fake(fake_config: Callable[..., SciqaConfig]) -> Callable[..., dict[str, Any]]:
    """``run_fake(passages, out, fake, *overrides, n=6, **run_gen_kwargs)``: its counts."""

    def run(
        passages: Path, out: Path, fake: FakeLLM, *overrides: str, n: int = 6, **kwargs: Any
    ) -> dict[str, Any]:
        config = fake_config(fake.base_url, *overrides, f"gen.n={n}")
        return run_gen(passages, out, config, **kwargs)

    return run


class HashEncoder:
    """Bag-of-words hashing encoder: same words -> cosine 1, disjoint words -> 0."""

    def encode(self, texts, normalize_embeddings=True, **_):
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.zeros((len(texts), 256))
        for row, text in enumerate(texts):
            for word in str(text).lower().split():
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % 256] += 1
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


@pytest.fixture
def hash_encoder() -> HashEncoder:
    """Stands in for ``models.embedding`` (MiniLM) where a test needs any encoder."""
    return HashEncoder()
