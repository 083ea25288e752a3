"""Fixtures the train tests share: tiny random encoders built once per session, and one
intra-op thread per test module."""

from pathlib import Path

import pytest

from tests.builders import TRAIN_WORDS as WORDS
from tests.builders import tiny_sizes, write_vocab

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train faster on one thread than fighting other jobs for two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _save_tiny(directory: Path, model, vocab: Path) -> str:
    from transformers import BertTokenizer

    model.save_pretrained(directory)
    BertTokenizer(str(vocab)).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    from transformers import BertConfig, BertForMultipleChoice

    directory = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    config = BertConfig(**tiny_sizes(WORDS, hidden=32, layers=2))
    return _save_tiny(directory, BertForMultipleChoice(config), write_vocab(directory, WORDS))


@pytest.fixture(scope="session")
def tiny_deberta(tmp_path_factory) -> str:
    from transformers import DebertaV2Config, DebertaV2ForMultipleChoice

    directory = tmp_path_factory.mktemp("tiny_deberta")
    torch.manual_seed(0)
    # The DeBERTa-v3 layout in miniature: relative attention with position buckets.
    config = DebertaV2Config(
        **tiny_sizes(WORDS, hidden=32, layers=2),
        type_vocab_size=0,
        relative_attention=True,
        position_buckets=16,
        pos_att_type=["p2c", "c2p"],
        pad_token_id=0,
    )
    return _save_tiny(directory, DebertaV2ForMultipleChoice(config), write_vocab(directory, WORDS))


@pytest.fixture
def kill_after_checkpoint(monkeypatch):
    """Make ``sciqa train`` die (KeyboardInterrupt) right after its first checkpoint is
    saved, as a killed job would; calling the returned function lets training finish."""
    from train.trainer import LengthGroupedTrainer

    original = LengthGroupedTrainer._save_checkpoint

    def save_then_die(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(LengthGroupedTrainer, "_save_checkpoint", save_then_die)
    return lambda: monkeypatch.setattr(LengthGroupedTrainer, "_save_checkpoint", original)
