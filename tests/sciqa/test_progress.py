"""sciqa.progress: plain lines in a log, a live bar on a terminal."""

from __future__ import annotations

import io

from sciqa.progress import LogProgress, progress, quiet_library_bars


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_short_step_leaves_nothing_in_the_log():
    log = io.StringIO()
    with progress(3, "gen", stream=log) as bar:
        bar.update(3)
    assert log.getvalue() == ""


def test_a_long_step_writes_a_line_a_minute_with_the_time_left_and_one_at_the_end():
    now = [0.0]
    log = io.StringIO()
    with LogProgress(100, "gen", "q", log, every=60, clock=lambda: now[0]) as bar:
        for _ in range(100):
            now[0] += 1.5  # 40 questions a minute
            bar.update()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 3  # at 60 s, 120 s, the end
    assert lines[0] == "gen: 40/100 q (40%), 40.0 q/min, 01:00 elapsed, ~01:30 left"
    assert lines[-1] == "gen: 100/100 q (100%), 40.0 q/min, 02:30 elapsed, ~00:00 left"


def test_the_rate_forgets_a_resumed_runs_cached_burst():
    now = [0.0]
    log = io.StringIO()
    with LogProgress(400, "gen", "q", log, every=60, clock=lambda: now[0]) as bar:
        bar.update(300)  # answered from the cache at once
        for _ in range(100):
            now[0] += 6.0  # then 10 new questions a minute
            bar.update()
    lines = log.getvalue().splitlines()
    assert lines[0] == "gen: 310/400 q (78%), 310.0 q/min, 01:00 elapsed, ~00:17 left"
    # Five lines on, the burst is out of the window: the rate and the time left are true.
    assert lines[5] == "gen: 360/400 q (90%), 10.0 q/min, 06:00 elapsed, ~04:00 left"


def test_on_a_terminal_it_is_tqdm_redrawing_one_line():
    screen = Terminal()
    with progress(2, "judge", stream=screen) as bar:
        bar.update(2)
    assert "\r" in screen.getvalue() and "judge" in screen.getvalue()


def test_in_a_log_the_hugging_face_libraries_bars_are_off_unless_the_user_said():
    environ = {"HF_DATASETS_DISABLE_PROGRESS_BARS": "0"}
    quiet_library_bars(io.StringIO(), environ)
    assert environ == {
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "0",
    }
    on_screen: dict[str, str] = {}
    quiet_library_bars(Terminal(), on_screen)
    assert on_screen == {}
