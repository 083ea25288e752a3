"""Fixtures the train tests share: tiny random encoders built once per session, one
intra-op thread per test module, the logits a saved fold gives, a refused ``sciqa train``,
a kill after the first checkpoint or in the second, and run files and configs for the
tiny models."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from sciqa.cli import app
from sciqa.io import write_table
from tests.builders import TRAIN_SMALL, make_config, tiny_sizes, train_questions, write_vocab
from tests.builders import TRAIN_WORDS as WORDS

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


@pytest.fixture(scope="session")
def fold_logits():
    """``fold_logits(fold_dir, rows, max_length)``: the logits the encoder saved in
    ``fold_dir`` gives ``rows``, encoded as infer encodes them (with context): what the
    run's ``oof.parquet`` must hold for them."""
    import transformers

    from sciqa.scoring.mc_encoding import encode_questions

    def logits(fold_dir: Path, rows: pd.DataFrame, max_length: int):
        model = transformers.AutoModelForMultipleChoice.from_pretrained(fold_dir).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(fold_dir)
        encoded = encode_questions(tokenizer, rows, max_length, use_context=True)
        batch = transformers.DataCollatorForMultipleChoice(tokenizer)(encoded.features)
        batch.pop("labels")
        with torch.no_grad():
            return model(**batch).logits.numpy()

    return logits


@pytest.fixture
def refused(tmp_path):
    """``refused(frame, backbone, *args, sets=())``: ``sciqa train`` on ``frame`` into
    ``tmp_path/run`` with 2 folds, ``--set`` each of ``sets``, then ``args``, which must
    fail with one line, exit 1 and no fold written; returns that line."""

    def invoke(frame: pd.DataFrame, backbone: str, *args: str, sets=()) -> str:
        path = write_table(frame, tmp_path / "q.csv")
        command = ["train", str(path), "--out", str(tmp_path / "run")]
        for item in (f"models.backbone={backbone}", "train.folds=2", *sets):
            command += ["--set", item]
        result = CliRunner().invoke(app, [*command, *args])
        assert result.exit_code == 1, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert not (tmp_path / "run" / "fold_0").exists()
        return result.output

    return invoke


@pytest.fixture
def kill_after_checkpoint(monkeypatch):
    """Make ``sciqa train`` die (KeyboardInterrupt) right after its first checkpoint is
    saved, as a killed job would; calling the returned function lets training finish.

    The kill sits in the ``on_save`` hook (the Trainer's public callback event, sent just
    after a checkpoint is written) of the log-line callback every fold's Trainer has."""
    from train.trainer import EvalLine

    original = EvalLine.on_save  # TrainerCallback's: does nothing

    def die(self, args, state, control, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(EvalLine, "on_save", die)
    return lambda: monkeypatch.setattr(EvalLine, "on_save", original)


@pytest.fixture
def kill_in_second_save(monkeypatch):
    """``kill_in_second_save(tear)``: make ``sciqa train`` die while it saves its second
    checkpoint, leaving that one torn, as a SIGKILL mid-write would; the first stays whole.
    Returns a function that lets training finish again.

    The kill sits in ``TrainerState.save_to_json``, the Trainer's last write into a
    checkpoint (before it rotates older ones away): the state is written, ``tear`` gets
    the checkpoint folder to damage (delete or cut a file), then KeyboardInterrupt."""
    from transformers import TrainerState

    original = TrainerState.save_to_json
    saves: list[str] = []

    def arm(tear: Callable[[Path], None]) -> Callable[[], None]:
        def save(self, json_path):
            original(self, json_path)
            saves.append(json_path)
            if len(saves) == 2:
                tear(Path(json_path).parent)
                raise KeyboardInterrupt

        monkeypatch.setattr(TrainerState, "save_to_json", save)
        return lambda: monkeypatch.setattr(TrainerState, "save_to_json", original)

    return arm


@pytest.fixture
def run_files(tmp_path):
    """``run_files(n, **kwargs)``: ``n`` train_questions written to ``tmp_path / q.csv``,
    and the run dir beside them."""

    def make(n: int = 12, **kwargs: Any) -> tuple[Path, Path]:
        return write_table(train_questions(n, **kwargs), tmp_path / "q.csv"), tmp_path / "run"

    return make


@pytest.fixture(scope="session")
def tokenize_cache(tmp_path_factory) -> str:
    """``train.tokenize_cache=<a session folder>``: the configs below tokenize there, not
    into ~/.cache."""
    return f"train.tokenize_cache={tmp_path_factory.mktemp('tokenized')}"


@pytest.fixture(scope="session")
def bert_config(tiny_bert, tokenize_cache):
    """The tiny BERT with the small train preset, plus ``--set`` overrides."""
    preset = (f"models.backbone={tiny_bert}", *TRAIN_SMALL, tokenize_cache)
    return lambda *extra: make_config(*preset, *extra)


@pytest.fixture(scope="session")
def deberta_config(tiny_deberta, tokenize_cache):
    """The tiny DeBERTa-v2 with the small train preset, plus ``--set`` overrides."""
    preset = (f"models.backbone={tiny_deberta}", *TRAIN_SMALL, tokenize_cache)
    return lambda *extra: make_config(*preset, *extra)
