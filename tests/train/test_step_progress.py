"""train.trainer.StepProgress: the Trainer's progress as sciqa.progress bars, which read
as plain lines in a log instead of tqdm's carriage returns."""

from __future__ import annotations

import io

from transformers import TrainerControl, TrainerState, TrainingArguments

from sciqa.config import TrainConfig
from sciqa.progress import LogProgress
from train.trainer import StepProgress, training_arguments


def _bars(log: io.StringIO, now: list[float]):
    def bar(total: int, desc: str, unit: str, leave: bool = True) -> LogProgress:
        return LogProgress(total, desc, unit, log, every=60, clock=lambda: now[0])

    return bar


def test_a_resumed_run_counts_from_its_checkpoint_and_evaluations_get_their_own_bar(tmp_path):
    now, log = [0.0], io.StringIO()
    callback = StepProgress("fold 0", bar=_bars(log, now))
    args, control = TrainingArguments(output_dir=str(tmp_path)), TrainerControl()
    state = TrainerState(max_steps=10, global_step=4)  # resumed at step 4
    callback.on_train_begin(args, state, control)
    for step in range(5, 11):
        now[0] += 30.0
        state.global_step = step
        callback.on_step_end(args, state, control)
    for _ in range(3):
        now[0] += 30.0
        callback.on_prediction_step(args, state, control, eval_dataloader=[0, 1, 2])
    callback.on_evaluate(args, state, control)
    callback.on_train_end(args, state, control)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines[0].startswith("fold 0 train: 6/10 step (60%)")  # 4 resumed + 2 in 60 s
    assert lines[-1].startswith("fold 0 train: 10/10 step (100%)")
    assert any(line.startswith("fold 0 eval: 3/3 batch (100%)") for line in lines)
    assert callback.batches is None and callback.steps is None


def test_only_the_main_process_draws():
    callback = StepProgress("fold 0", bar=lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    state = TrainerState(max_steps=10)
    state.is_world_process_zero = False
    args, control = None, TrainerControl()
    callback.on_train_begin(args, state, control)
    callback.on_step_end(args, state, control)
    callback.on_prediction_step(args, state, control, eval_dataloader=[0])
    callback.on_train_end(args, state, control)


def test_the_trainers_own_tqdm_is_off(tmp_path):
    assert training_arguments(TrainConfig(), tmp_path, seed=0).disable_tqdm
