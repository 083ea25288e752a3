"""``infer.devices``: questions sharded over devices equal the one-device run.

CI has no GPU, so the devices are ``["cpu", "cpu"]``: two worker threads, one model copy
each, one intra-op thread each on a 2-core machine. GPUs are simulated only where the
test is about refusing them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from infer.commands import run_infer  # noqa: E402
from infer.ensemble.combine import combine  # noqa: E402
from infer.errors import InferError  # noqa: E402
from infer.predictors.base import (  # noqa: E402
    BatchTiming,
    Interrupted,
    length_order,
    padded_tokens,
)
from infer.predictors.devices import resolve_devices  # noqa: E402
from infer.predictors.sharded import (  # noqa: E402
    ShardedPredictor,
    Worker,
    cpu_threads,
    shard_rows,
)
from sciqa.io import write_questions  # noqa: E402
from sciqa.submission import read_submission  # noqa: E402
from tests.builders import (  # noqa: E402
    INFER_SMALL,
    load_logits,
    make_config,
    make_model,
    make_questions,
    make_run,
)

TWO_CPUS = "infer.devices=[cpu, cpu]"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "run", 1)


@pytest.fixture
def qfile(tmp_path) -> Path:
    """23 questions here (conftest's has 10): 8 batches of 3 to shard."""
    return write_questions(make_questions(23), tmp_path / "questions.csv")


def _assert_same_run(one: Path, two: Path) -> None:
    a, b = load_logits(one), load_logits(two)
    assert a.keys() == b.keys() and a
    for name in a:
        # Same batches on both sides: bitwise in practice; 1e-6 allows another thread count.
        np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-6, err_msg=name)
    assert (one / "submission.csv").read_text() == (two / "submission.csv").read_text()


# --- sharding -----------------------------------------------------------------------


@pytest.mark.parametrize("n_shards", [1, 2, 3, 5])
@pytest.mark.parametrize("with_rows", [False, True])
def test_shards_are_whole_batches_of_the_one_device_order(n_shards, with_rows):
    rng = np.random.default_rng(n_shards)
    lengths = rng.integers(1, 40, size=29).tolist()
    rows = np.sort(rng.choice(29, size=13, replace=False)) if with_rows else None
    batch = 4
    order = length_order(lengths, rows)
    one_device = {tuple(order[i : i + batch]) for i in range(0, len(order), batch)}
    shards = shard_rows(lengths, rows, batch_size=batch, n_shards=n_shards)
    assert len(shards) == n_shards
    got = []
    for shard in shards:
        mine = length_order(lengths, shard)  # what each device's predictor does
        got += [tuple(mine[i : i + batch]) for i in range(0, len(mine), batch)]
    assert set(got) == one_device and len(got) == len(one_device)
    expected = np.arange(29) if rows is None else rows
    assert np.array_equal(np.sort(np.concatenate(shards)), expected)


def test_shards_balance_padded_tokens():
    lengths = [100] * 4 + [10] * 36  # 1 long batch, 9 short ones (batch of 4)
    shards = shard_rows(lengths, batch_size=4, n_shards=2)
    tokens = [padded_tokens(lengths, 1, 4, s) for s in shards]
    assert tokens == [400, 360]  # the long batch alone vs all the short ones


class FakePredictor:
    """Scores rows as ``row index + option``; waits for ``go`` before each batch; takes
    ``linger`` seconds to pass on an error from ``on_batch``."""

    batch_size = 2

    def __init__(self, go=None, fail: BaseException | None = None, linger: float = 0.0):
        self.go, self.fail, self.linger, self.closed = go, fail, linger, False

    def logits(self, features, lengths, *, rows=None, desc="", on_batch=None):
        out = np.full((len(lengths), 3), np.nan, dtype=np.float32)
        order = length_order(lengths, rows)
        for start in range(0, len(order), self.batch_size):
            if self.go is not None:
                self.go.wait(5)
            if self.fail is not None:
                raise self.fail
            chunk = order[start : start + self.batch_size]
            out[chunk] = chunk[:, None] + np.arange(3)
            try:
                if on_batch is not None:
                    on_batch(BatchTiming(len(chunk), 1, 0.0))
            except BaseException:
                time.sleep(self.linger)
                raise
        return out

    def close(self):
        self.closed = True


def _sharded(*predictors) -> ShardedPredictor:
    cpu = torch.device("cpu")
    return ShardedPredictor([Worker(cpu, p) for p in predictors])


def test_sharded_predictor_puts_every_row_back():
    lengths = [3, 9, 4, 4, 7, 1, 2]
    out = _sharded(FakePredictor(), FakePredictor(), FakePredictor()).logits(None, lengths)
    np.testing.assert_array_equal(out, np.arange(7)[:, None] + np.arange(3))
    rows = np.array([1, 4, 5])
    part = _sharded(FakePredictor(), FakePredictor()).logits(None, lengths, rows=rows)
    assert np.isnan(part[[0, 2, 3, 6]]).all() and (part[rows, 0] == rows).all()


def test_a_stop_is_seen_once_and_stops_the_other_worker():
    go, calls = threading.Event(), []

    def on_batch(timing):
        calls.append(timing)
        go.set()  # the other worker now runs its batch and waits for the lock
        raise Interrupted("does not fit the time budget")

    # The first worker lingers on its way out (closing its progress bar, say): the
    # second must not slip in a batch and ask the budget again meanwhile.
    sharded = _sharded(FakePredictor(linger=0.3), FakePredictor(go))
    with pytest.raises(Interrupted, match="does not fit"):
        sharded.logits(None, [5, 4, 3, 2], on_batch=on_batch)
    assert len(calls) == 1  # the second worker stopped instead of asking again


def test_a_real_error_wins_over_the_stop_it_causes():
    sharded = _sharded(FakePredictor(), FakePredictor(fail=RuntimeError("CUDA out of memory")))
    with pytest.raises(RuntimeError, match="out of memory"):
        sharded.logits(None, [5, 4, 3, 2, 1], on_batch=lambda t: None)
    sharded.close()
    assert all(w.predictor.closed for w in sharded.workers)


# --- equal to one device ------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "tta", "weights"),
    [
        ((), 1, "equal"),
        (("infer.ensemble=logits",), 3, "1,3"),
        (("infer.cascade_cheap=1", "infer.cascade_fraction=0.4"), 2, "equal"),
    ],
    ids=["plain", "tta+weights", "cascade+tta"],
)
def test_two_cpu_workers_equal_one_device(qfile, run_dir, tmp_path, sets, tta, weights):
    one = run_infer(
        qfile,
        [str(run_dir)],
        tmp_path / "one",
        make_config(*INFER_SMALL, *sets, f"infer.tta={tta}", f"infer.weights={weights}"),
    )
    two = run_infer(
        qfile,
        [str(run_dir)],
        tmp_path / "two",
        make_config(*INFER_SMALL, *sets, TWO_CPUS, f"infer.tta={tta}", f"infer.weights={weights}"),
    )
    _assert_same_run(tmp_path / "one", tmp_path / "two")
    assert two["devices"] == ["cpu", "cpu"] and one["devices"] == ["cpu"]
    assert [m["weight"] for m in two["models"]] == [m["weight"] for m in one["models"]]
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    for row in manifest["models"][:-1]:
        # Which device scored what: both workers took part, together every question-pass.
        scored = [d["questions"] for d in row["devices"]]
        assert [d["device"] for d in row["devices"]] == ["cpu", "cpu"]
        assert all(n > 0 for n in scored)
        cheap = "cascade" not in one or row["model"] in one["cascade"]["cheap"]
        n_rows = 23 if cheap else one["cascade"]["escalated"]
        assert sum(scored) == n_rows * row["passes"]
    if "cascade" in one:
        assert two["cascade"]["escalated"] == one["cascade"]["escalated"] == 10


@pytest.fixture
def few(tmp_path) -> Path:
    """Fewer questions for the (slower) causal LM: still 5 batches of 3 to shard."""
    return write_questions(make_questions(14), tmp_path / "few.csv")


def test_causal_member_is_split_and_equal(few, tiny_llm, tmp_path):
    member = f"llm:{tiny_llm}?mode=letter"  # letter scoring: where TTA changes the scores
    run_infer(few, [member], tmp_path / "one", make_config(*INFER_SMALL, "infer.tta=2"))
    result = run_infer(
        few, [member], tmp_path / "two", make_config(*INFER_SMALL, TWO_CPUS, "infer.tta=2")
    )
    _assert_same_run(tmp_path / "one", tmp_path / "two")
    assert [sum(d["questions"] for d in m["devices"]) for m in result["models"][:-1]] == [28]
    assert all(d["questions"] > 0 for d in result["models"][0]["devices"])


def test_device_map_member_is_not_split_again(few, tiny_llm, tmp_path, monkeypatch, caplog):
    # device_map needs CUDA; here it loads on the CPU, which is all this test needs: the
    # member must run once, on one worker, and say why.
    monkeypatch.setattr("sciqa.assets.llm.quantization_kwargs", lambda load_in, device_map: {})
    members = [f"llm:{tiny_llm}?device_map=auto", str(make_model(tmp_path / "encoder", 5))]
    run_infer(few, members, tmp_path / "one", make_config(*INFER_SMALL))
    with caplog.at_level(logging.INFO, logger="infer"):
        result = run_infer(few, members, tmp_path / "two", make_config(*INFER_SMALL, TWO_CPUS))
    _assert_same_run(tmp_path / "one", tmp_path / "two")
    spread, encoder = result["models"][:2]
    assert len(spread["devices"]) == 1 and spread["devices"][0]["questions"] == 14
    assert "device_map='auto'" in spread["not_split"] and "not split" in spread["not_split"]
    assert len(encoder["devices"]) == 2 and "not_split" not in encoder
    assert "not split over infer.devices" in caplog.text


def test_cache_is_shared_between_device_counts(qfile, run_dir, tmp_path, no_loading):
    out = tmp_path / "out"
    run_infer(qfile, [str(run_dir)], out, make_config(*INFER_SMALL, "infer.tta=2"))
    first = (out / "submission.csv").read_text()
    config = make_config(*INFER_SMALL, TWO_CPUS, "infer.tta=2")
    result = run_infer(qfile, [str(run_dir)], out, config, open_member=no_loading)
    assert {m["status"] for m in result["models"][:-1]} == {"cached"}
    assert (out / "submission.csv").read_text() == first


def test_cpu_workers_split_the_intra_op_threads(qfile, run_dir, tmp_path, spy):
    seen: dict[str, int] = {}

    def recording(spec, timing):
        seen[threading.current_thread().name] = torch.get_num_threads()
        return timing

    before = torch.get_num_threads()
    config = make_config(*INFER_SMALL, TWO_CPUS)
    fold = [str(run_dir / "fold_0")]
    run_infer(qfile, fold, tmp_path / "out", config, open_member=spy(recording))
    assert sorted(seen) == ["sciqa-infer-0", "sciqa-infer-1"]  # two worker threads
    assert set(seen.values()) == {max(1, before // 2)}
    assert torch.get_num_threads() == before  # the main thread keeps its setting


# --- the budget and interruptions ---------------------------------------------------


# Time moves only in batches (conftest's clock and slow members): each worker thread has
# its own time line, and a parallel section costs the main thread its slowest worker's.


def test_the_fake_clock_counts_a_parallel_section_once_in_any_thread_order(clock):
    """Under load one worker can finish before its sibling starts; the section still costs
    its slowest worker, and a later section starts after it."""
    first = threading.Thread(target=clock.spend, args=(20.0,))
    second = threading.Thread(target=clock.spend, args=(15.0,))
    first.start()
    while first.is_alive():  # finished, not yet joined, before the second starts
        time.sleep(0.001)
    second.start()
    first.join()
    second.join()
    assert clock() == 20.0
    third = threading.Thread(target=lambda: clock.spend(5.0 + clock() - 20.0))
    third.start()
    third.join()
    assert clock() == 25.0


def test_budget_plans_for_devices_in_parallel(qfile, run_dir, tmp_path, clock, slow):
    fold = [str(run_dir / "fold_0")]
    one = run_infer(
        qfile, fold, tmp_path / "t", make_config(*INFER_SMALL), clock=clock, open_member=slow()
    )
    pass_seconds = one["models"][0]["seconds"]
    budget = f"{2.6 * pass_seconds:.3f}s"
    cfg = ("infer.budget_margin=0",)
    clock.now = 0.0
    serial = run_infer(
        qfile,
        [str(run_dir)],
        tmp_path / "a",
        make_config(*INFER_SMALL, *cfg, "infer.tta=2", f"infer.time_budget={budget}"),
        clock=clock,
        open_member=slow(),
    )
    clock.now = 0.0
    parallel = run_infer(
        qfile,
        [str(run_dir)],
        tmp_path / "b",
        make_config(*INFER_SMALL, *cfg, TWO_CPUS, "infer.tta=2", f"infer.time_budget={budget}"),
        clock=clock,
        open_member=slow(),
    )
    # One device: 2 folds x 1 pass fit. Two devices halve every pass: 2 folds x 2 passes.
    assert [m["passes"] for m in serial["models"][:-1]] == [1, 1]
    assert [m["passes"] for m in parallel["models"][:-1]] == [2, 2]
    assert parallel["elapsed_seconds"] <= 2.6 * pass_seconds
    sub = read_submission(tmp_path / "b" / "submission.csv")
    assert len(sub) == 23 and all(len(p.split()) == 3 for p in sub["prediction"])


def test_budget_stop_on_one_device_stops_the_other(qfile, run_dir, tmp_path, clock, slow):
    # fold_1 turns out 50x slower than its estimate: after its first timed batch the plan
    # drops it; the other worker stops at its next batch and fold_0's submission stands.
    slower_fold_1 = slow(lambda spec: 0.51 if "fold_1" in spec.name else 0.01)
    fold = [str(run_dir / "fold_0")]
    config = make_config(*INFER_SMALL)
    one = run_infer(qfile, fold, tmp_path / "t", config, clock=clock, open_member=slower_fold_1)
    clock.now = 0.0
    out = tmp_path / "out"
    result = run_infer(
        qfile,
        [str(run_dir)],
        out,
        make_config(
            *INFER_SMALL,
            "infer.budget_margin=0",
            TWO_CPUS,
            f"infer.time_budget={4 * one['models'][0]['seconds']:.3f}s",
        ),
        clock=clock,
        open_member=slower_fold_1,
    )
    fold_0, fold_1 = result["models"][:2]
    assert fold_0["status"] == "done" and fold_1["passes"] == 0
    assert "does not fit the time budget" in fold_1["status"]
    assert sum(d["questions"] for d in fold_1["devices"]) == 0  # no pass was finished
    fold_0_logits = np.load(out / "logits" / "run-fold_0.npy")
    expected = combine([fold_0_logits], [1.0], "probs")
    np.testing.assert_array_equal(np.load(out / "logits" / "ensemble.npy"), expected)


def test_kill_in_a_worker_leaves_the_previous_submission(qfile, run_dir, tmp_path, spy):
    out = tmp_path / "out"
    run_infer(qfile, [str(run_dir / "fold_0")], out, make_config(*INFER_SMALL))
    before = (out / "submission.csv").read_text()

    def dies_in_a_worker(spec, timing):
        if threading.current_thread() is not threading.main_thread():
            raise KeyboardInterrupt
        return timing

    with pytest.raises(KeyboardInterrupt):
        config = make_config(*INFER_SMALL, TWO_CPUS)
        run_infer(qfile, [str(run_dir)], out, config, open_member=spy(dies_in_a_worker))
    assert (out / "submission.csv").read_text() == before
    assert not list(out.glob(".*.tmp"))
    assert not [t for t in threading.enumerate() if t.name.startswith("sciqa-infer")]


# --- bad input: one line, exit 1, the previous submission intact --------------------


@pytest.fixture
def one_gpu(monkeypatch):
    """A machine with one CUDA device, as far as device checks can tell."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


@pytest.mark.parametrize(
    ("sets", "gpu", "message"),
    [
        (["infer.devices=[cpu, gpu0]"], False, "infer.devices[1] = 'gpu0' is not a device"),
        (["infer.devices=[cpu, auto]"], False, "infer.devices[1] = 'auto' is not a device"),
        (["infer.devices=[cuda:0, cuda:1]"], False, "no CUDA device is visible"),
        (["infer.devices=[cuda:0, cuda:1]"], True, "infer.devices[1] = 'cuda:1' but only 1"),
        (["infer.devices=[]"], False, "infer.devices = []: name at least one device"),
        (["infer.devices=[cpu, cuda:0]"], True, "mixes cpu and cuda"),
        (["infer.device=cuda:0", "infer.devices=[cpu, cpu]"], False, "conflicts with"),
        (["infer.device=cpu", "infer.devices=[cuda:0]"], True, "infer.device = 'cpu' conflicts"),
        (["infer.devices=cpu"], False, "infer.devices"),
        (["infer.device=cuda:3"], True, "infer.device = 'cuda:3' but only 1"),
    ],
)
def test_bad_devices_one_line_error(
    tmp_path, qfile, run_dir, request, cli_small, sets, gpu, message
):
    out = tmp_path / "out"
    assert cli_small(str(qfile), str(run_dir / "fold_0"), "--out", str(out)).exit_code == 0
    before = (out / "submission.csv").read_text()
    if gpu:
        request.getfixturevalue("one_gpu")
    set_args = [arg for s in sets for arg in ("--set", s)]
    result = cli_small(str(qfile), str(run_dir), "--out", str(out), *set_args)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert (out / "submission.csv").read_text() == before


@pytest.mark.parametrize(
    ("device", "devices", "expected"),
    [
        ("auto", ["cpu", "cpu"], ["cpu", "cpu"]),
        ("cpu", ["cpu", "cpu"], ["cpu", "cpu"]),
        ("cuda", ["cuda:0", "cuda:0"], ["cuda:0", "cuda:0"]),
        ("cuda:0", ["cuda:0"], ["cuda:0"]),
        ("cpu", None, ["cpu"]),
    ],
)
def test_compatible_device_settings(one_gpu, device, devices, expected):
    assert [str(d) for d in resolve_devices(device, devices)] == expected


def test_device_errors_name_the_key_without_a_gpu():
    with pytest.raises(InferError, match=r"infer\.device = 'cuda' but no CUDA"):
        resolve_devices("cuda", None)
    assert cpu_threads([torch.device("cpu")]) is None


def test_budget_too_small_on_two_devices_writes_nothing(qfile, run_dir, tmp_path, clock, slow):
    fold = [str(run_dir / "fold_0")]
    one = run_infer(
        qfile, fold, tmp_path / "t", make_config(*INFER_SMALL), clock=clock, open_member=slow()
    )
    clock.now = 0.0
    out = tmp_path / "out"
    budget = f"{0.05 * one['models'][0]['seconds']:.3f}s"
    with pytest.raises(InferError, match="too small for even one model"):
        run_infer(
            qfile,
            [str(run_dir)],
            out,
            make_config(*INFER_SMALL, TWO_CPUS, f"infer.time_budget={budget}"),
            clock=clock,
            open_member=slow(),
        )
    assert not out.exists()


@pytest.mark.gpu
def test_two_gpus_equal_one_gpu(qfile, run_dir, tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices")
    fp32 = "infer.dtype=fp32"
    run_infer(
        qfile,
        [str(run_dir)],
        tmp_path / "one",
        make_config(*INFER_SMALL, fp32, "infer.device=cuda:0"),
    )
    result = run_infer(
        qfile,
        [str(run_dir)],
        tmp_path / "two",
        make_config(*INFER_SMALL, fp32, "infer.devices=[cuda:0, cuda:1]"),
    )
    _assert_same_run(tmp_path / "one", tmp_path / "two")
    assert [d["device"] for d in result["models"][0]["devices"]] == ["cuda:0", "cuda:1"]
