"""`make exam`'s driver (examples/exam.py) and its results (examples/exam_results.py):
what the plan trains on, resuming after a kill, the progress lines, the table and plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from examples import exam, exam_results


class Killed(Exception):
    pass


HELD_OUT = {exam.TEST, exam.ARC_C, exam.ctx_file(exam.TEST), exam.ctx_file(exam.ARC_C)}


def test_no_reader_trains_or_validates_on_the_exam_or_arc_challenge():
    steps = exam.plan()
    trains = [s for s in steps if s.argv[0] == "train"]
    assert len(trains) == 2 * (1 + 2 * len(exam.SIZES))  # arc, then gen + arcgen per size
    for step in trains:
        assert not {Path(a) for a in step.argv} & HELD_OUT, step.line()
    gens = [s for s in steps if s.argv[0] == "gen" and "gen.articles=train" in s.argv]
    assert all("--exclude" in s.argv and str(exam.TEST) in s.argv for s in gens)
    commands = {"gen", "audit", "retrieve", "train", "infer", "eval", "report"}
    assert all(s.argv[0] in commands for s in steps)


def test_training_sets_are_cut_from_one_pool_and_mix_with_arc_easy():
    steps = {s.title: s for s in exam.plan(sizes=[250, 500], context_sizes=[])}
    pool = next(s for t, s in steps.items() if t.startswith("the training pool"))
    for n in (250, 500):
        cut = steps[f"training set {n}: the first {n} of the pool"]
        assert cut.argv[-2:] == ["--set", f"gen.max_questions={n}"]
        assert cut.argv[:-2][4:] == pool.argv[4:]  # the same passages, cache and filters
        both = steps[f"train arcgen_{n} on arc_easy.csv + questions.parquet"]
        assert both.inputs == [exam.ARC_EASY, exam.gen_file(n)]
    assert not any("_ctx" in t for t in steps)  # no context sizes: no context readers


def test_each_reader_is_paired_with_the_arc_easy_reader_of_its_context():
    for step in exam.plan():
        if step.output.parent == exam.EXAM / "eval" and "--against" in step.argv:
            against = step.argv[step.argv.index("--against") + 1]
            mine = step.argv[1]
            assert ("_ctx" in mine) == ("arc_0_ctx" in against) or "qwen" in mine, step.line()


def test_each_context_reader_is_paired_with_itself_closed_book_run_earlier():
    steps = exam.plan()
    written = {}
    paired = []
    for index, step in enumerate(steps):
        written[step.output] = index
        if step.output.parent == exam.EXAM / "eval_context":
            mine, against = Path(step.argv[1]), Path(step.argv[step.argv.index("--against") + 1])
            assert mine.parts[-3] == against.parts[-3] + "_ctx", step.line()
            assert mine.parent.name == against.parent.name  # the same exam
            assert written[against] < index  # the closed-book answers exist by then
            paired.append(mine.parts[-3])
    context_readers = {r.name for r in exam.readers(exam.SIZES, exam.SIZES) if r.context}
    assert set(paired) == context_readers | {"qwen_ctx"}
    assert len(paired) == 2 * len(context_readers) + 1  # Qwen reads the exam only


@pytest.fixture
def demo(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_killed_run_resumes_at_the_step_it_stopped(demo):
    steps = exam.plan(sizes=[250], context_sizes=[])
    ran: list[list[str]] = []
    killed: list[bool] = []

    def runner(argv):
        ran.append(argv)
        if len(ran) == 4 and not killed:
            killed.append(True)
            raise Killed  # the kill, once
        step = next(s for s in steps if s.argv == argv)
        step.output.parent.mkdir(parents=True, exist_ok=True)
        step.output.write_text("done")
        return 0

    lines: list[str] = []
    with pytest.raises(Killed):
        exam.run_plan(steps, runner, lines.append)
    assert len(ran) == 4
    ran.clear()
    exam.run_plan(steps, runner, lines.append)
    assert ran[0] == steps[3].argv  # the killed step again, none of the three before it
    assert len(ran) == len(steps) - 3
    assert sum(": done (" in line for line in lines) == 3
    assert all(step.output.exists() for step in steps)


def test_progress_lines_scale_the_time_left_by_the_steps_run_so_far(demo):
    steps = [exam.Step(f"s{i}", ["eval", str(i)], Path(f"out{i}"), 40.0) for i in range(3)]
    now = [0.0]

    def runner(argv):
        now[0] += 80.0  # every step takes twice its estimate
        Path(f"out{argv[1]}").write_text("x")
        return 0

    lines: list[str] = []
    exam.run_plan(steps, runner, lines.append, clock=lambda: now[0])
    heads = [line for line in lines if line.startswith("[exam ")]
    assert heads[0].endswith("s0: ~40 s, ~2 min left in all")  # 3 x 40 s
    assert heads[1].endswith("s1: ~80 s, ~3 min left in all")  # 2 x 40 s, x 2
    assert heads[2].endswith("s2: ~80 s, ~80 s left in all")


def test_a_failed_step_stops_the_run_naming_the_command(demo):
    steps = exam.plan(sizes=[250], context_sizes=[])
    with pytest.raises(SystemExit, match=r"step 1 failed \(exit 2\): sciqa gen "):
        exam.run_plan(steps, lambda argv: 2, lambda line: None)


def _eval(map3: float, diff: float | None = None) -> dict:
    result = {"map_at_3": map3, "map_at_3_ci": {"low": map3 - 0.05, "high": map3 + 0.05}}
    if diff is not None:
        result["against"] = {
            "difference": {"estimate": diff, "low": diff - 0.04, "high": diff + 0.04}
        }
    return result


def test_results_table_and_plot_from_the_evaluations(demo):
    folder = demo / "runs" / "exam"
    (folder / "eval").mkdir(parents=True)
    written = {
        "arc_0_test": _eval(0.41),
        "arc_0_arcc": _eval(0.55),
        "gen_0_test": _eval(0.38, -0.03),
        "arcgen_250_test": _eval(0.47, 0.06),
        "arcgen_250_ctx_test": _eval(0.61, 0.10),
        "qwen_test": _eval(0.52, 0.11),
    }
    for name, result in written.items():
        (folder / "eval" / f"{name}.json").write_text(json.dumps(result))
    evals = exam_results.read_evals(folder)
    text = exam_results.table(evals)
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()[2:]}
    assert list(rows) == ["arc_0", "gen_0", "arcgen_250", "qwen", "arcgen_250_ctx"]
    assert "0.470 [0.420, 0.520] | +0.060 [+0.020, +0.100]" in rows["arcgen_250"]
    assert "| 0.550 [0.500, 0.600] |" in rows["arc_0"]
    assert "nothing (as shipped)" in rows["gen_0"]
    audit = {
        "questions": 300,
        "options": 5,
        "chance_map_at_3": 0.3667,
        "answer_letters": {"balanced": True},
        "baselines": {
            "longest": {"map_at_3": 0.53, "ci95": [0.48, 0.58], "verdict": "above chance"}
        },
    }
    (folder / "audit_test.json").write_text(json.dumps(audit))
    lines = exam_results.shortcuts(folder)
    assert lines[1] == "- shortcut `longest`: MAP@3 0.530 [0.480, 0.580] (above chance)"
    (folder / "eval_context").mkdir()
    paired = {"arcgen_250_ctx_test": _eval(0.61, 0.14), "arcgen_250_ctx_arcc": _eval(0.5, -0.02)}
    for name, result in paired.items():
        (folder / "eval_context" / f"{name}.json").write_text(json.dumps(result))
    context = exam_results.context_table(exam_results.read_evals(folder, "eval_context"))
    assert context.splitlines()[2] == (
        "| arcgen_250 | +0.140 [+0.100, +0.180] | -0.020 [-0.060, +0.020] |"
    )
    assert exam_results.context_table({}) == ""
    png = exam_results.plot(evals, folder / "exam.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_chance_map3():
    assert exam_results.chance_map3(5) == pytest.approx((1 + 1 / 2 + 1 / 3) / 5)
    assert exam_results.chance_map3(4) == pytest.approx(0.4583, abs=1e-4)
    assert exam_results.parse_name("arcgen_500_ctx") == ("arcgen", 500, True)
    assert exam_results.parse_name("qwen") == ("qwen", 0, False)


def _written_before(steps: list) -> list[tuple[str, set[Path]]]:
    """Each step's line with the files and folders that earlier steps wrote."""
    written: set[Path] = set()
    out = []
    for step in steps:
        out.append((step.line(), set(written)))
        written |= {step.output, *step.output.parents}
    return out


@pytest.mark.parametrize("context_sizes", [None, [0], []])
def test_every_step_reads_only_what_make_demo_or_an_earlier_step_wrote(context_sizes):
    steps = exam.plan(sizes=[250, 500], context_sizes=context_sizes, pool=900)
    for step, (line, written) in zip(steps, _written_before(steps), strict=True):
        for arg in step.argv[1:]:
            path = Path(arg)
            if path.parts[:2] != exam.EXAM.parts or path in {step.output, *step.output.parents}:
                continue
            produced = path in written or path.with_suffix("") in written
            is_out = step.argv[step.argv.index(arg) - 1] == "--out"
            assert produced or is_out, f"{line}: {arg} is read before any step writes it"


def test_a_larger_pool_asks_new_passages_under_a_new_name_and_keeps_the_cuts():
    small = {s.title: s for s in exam.plan(sizes=[250], context_sizes=[], pool=1000)}
    large = {s.title: s for s in exam.plan(sizes=[250], context_sizes=[], pool=1600)}
    title = next(t for t in small if t.startswith("the training pool"))
    assert small[title].output != large[title].output  # a done small pool does not skip it
    assert "1600" in large[title].argv and "1000" in small[title].argv
    cut = "training set 250: the first 250 of the pool"
    assert small[cut].output == large[cut].output  # the same first 250 (a permutation's prefix)


def test_a_larger_pool_is_estimated_by_the_passages_a_smaller_one_did_not_ask(demo):
    def pool_seconds() -> float:
        return exam.gen_steps([250], pool=1400)[1].seconds

    fresh = pool_seconds()
    smaller = exam.pool_file(1000)
    smaller.parent.mkdir(parents=True)
    smaller.write_bytes(b"")
    assert pool_seconds() == pytest.approx(fresh - 1000 * exam.RATE["gen"] * 0.8)


def test_the_closed_book_comparison_comes_before_any_context_step():
    steps = exam.plan(sizes=[250], context_sizes=[250])
    first_ctx = next(i for i, s in enumerate(steps) if "use_context=true" in s.line())
    evals = [(i, s.line()) for i, s in enumerate(steps) if s.argv[0] == "eval"]
    closed = [i for i, line in evals if "_ctx" not in line and "qwen" not in line]
    assert max(closed) < first_ctx


def test_facts_list_every_gen_run_the_driver_writes(demo):
    folder = demo / "runs" / "exam"
    steps = exam.plan(sizes=[250], context_sizes=[], pool=900)
    gen_runs = [s.output.parent for s in steps if s.argv[0] == "gen"]
    near = {"cosine": 0.71, "prompt": "Q?", "nearest_prompt": "P?"}
    for run in [*gen_runs, folder / "readers" / "arc_0"]:
        (demo / run).mkdir(parents=True)
        post = {"kept": 3, "valid": 4, "nearest_excluded": near}
        (demo / run / "manifest.json").write_text(json.dumps({"postprocess": post}))
    import pandas as pd

    exam_file = folder / "test" / "questions.parquet"
    pd.DataFrame({"prompt": ["P?"], "A": ["a"], "B": ["b"], "answer": ["A"]}).to_parquet(exam_file)
    lines = exam_results.facts(folder)
    assert [line.split(":")[0] for line in lines] == ["- pool_900", "- test", "- train_250"]
    assert "cosine 0.710 ('Q?' vs 'P?')" in lines[0]
    assert f"content {exam_results.fingerprint(exam_file)}" in lines[1]
    assert "content" not in lines[0]  # no questions file there


def test_source_found_counts_questions_whose_first_passage_is_their_source(demo):
    import pandas as pd

    folder = demo / "runs" / "exam"
    (folder / "ctx").mkdir(parents=True)
    (folder / "test").mkdir()
    pd.DataFrame({"id": ["q1", "q2", "q3"], "source_id": ["p1", "p2", "p3"]}).to_parquet(
        folder / "test" / "questions.parquet"
    )
    pd.DataFrame(
        {
            "id": ["q1", "q1", "q2", "q2"],
            "rank": [1, 2, 1, 2],
            "passage_id": ["p1", "p9", "p9", "p2"],  # q2's source only second; q3: none
        }
    ).to_parquet(folder / "ctx" / "test.retrieval.parquet")
    pd.DataFrame({"id": ["a"], "rank": [1], "passage_id": ["p1"]}).to_parquet(
        folder / "ctx" / "arc_challenge.retrieval.parquet"
    )
    assert exam_results.source_found(folder) == [
        "- test: retrieval's first passage is the source passage for 1 of 3 questions (33%)"
    ]


def test_the_exam_split_by_whether_retrieval_found_the_source(demo):
    import pandas as pd

    folder = demo / "runs" / "exam"
    (folder / "ctx").mkdir(parents=True)
    (folder / "test").mkdir()
    pd.DataFrame(
        {"id": ["q1", "q2", "q3"], "answer": ["A", "B", "C"], "source_id": ["p1", "p2", "p3"]}
    ).to_parquet(folder / "test" / "questions.parquet")
    first = {"id": ["q1", "q2", "q3"], "rank": [1, 1, 1], "passage_id": ["p1", "p2", "x"]}
    pd.DataFrame(first).to_parquet(folder / "ctx" / "test.retrieval.parquet")
    for run, predictions in (
        ("arc_0", ["B A C", "A B C", "C A B"]),  # found: 0.5, 0.5; not found: 1
        ("arc_0_ctx", ["A B C", "B A C", "A B D"]),  # found: 1, 1; not found: 0
    ):
        out = folder / "infer" / run / "test"
        out.mkdir(parents=True)
        pd.DataFrame({"id": ["q1", "q2", "q3"], "prediction": predictions}).to_csv(
            out / "submission.csv", index=False
        )
    table = exam_results.by_source_found(folder, ["arc_0_ctx"]).splitlines()
    assert "source found (2)" in table[0] and "source not found (1)" in table[0]
    assert table[2] == "| arc_0 | 0.500 | 1.000 | 1.000 | 0.000 |"


def test_the_fingerprint_ignores_row_order_and_sees_a_changed_key(tmp_path):
    import pandas as pd

    rows = {"id": ["q1", "q2"], "prompt": ["P?", "Q?"], "A": ["a", "c"], "B": ["b", "d"]}
    pd.DataFrame({**rows, "answer": ["A", "B"]}).to_parquet(tmp_path / "one.parquet")
    shuffled = pd.DataFrame({**rows, "answer": ["A", "B"]}).iloc[::-1]
    shuffled.to_parquet(tmp_path / "two.parquet")
    pd.DataFrame({**rows, "answer": ["B", "B"]}).to_parquet(tmp_path / "three.parquet")
    one, two, three = (
        exam_results.fingerprint(tmp_path / f"{n}.parquet") for n in ("one", "two", "three")
    )
    assert one == two and one != three and len(one) == 12


def test_the_writer_answers_after_every_reader():
    steps = exam.plan(sizes=[250], context_sizes=[250])
    writer = [i for i, s in enumerate(steps) if "llm:qwen" in s.line()]
    readers = [i for i, s in enumerate(steps) if s.argv[0] in ("train", "infer")]
    readers = [i for i in readers if i not in writer]
    assert len(writer) == 2 and min(writer) > max(readers)


def test_the_writer_reads_with_and_without_context_alike():
    """Only the questions file (and where answers go) differs, so the paired difference is
    context's: 4 rotations against 1 once passed for it (+0.045 of a -0.096)."""
    closed, ctx = (
        next(s for s in exam.plan() if "llm:qwen" in s.line() and f"/{name}/" in s.line())
        for name in ("qwen", "qwen_ctx")
    )
    assert closed.argv[1] == str(exam.TEST) and ctx.argv[1] == str(exam.ctx_file(exam.TEST))
    same = [a for i, a in enumerate(closed.argv) if i != 1 and a != str(closed.output.parent)]
    assert same == [a for i, a in enumerate(ctx.argv) if i != 1 and a != str(ctx.output.parent)]
