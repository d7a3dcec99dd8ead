"""The progress line: counts, rates, status values and ETA."""
import io

from distill_jax import progress


def test_progress_line_shows_rates_status_and_eta(monkeypatch):
    clock = iter([0.0, 10.0, 10.0, 10.0, 20.0, 20.0, 20.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    p = progress.Progress(4, "steps", "train", stream=out, min_interval_s=0.0, skip_first=True)
    p.update(1, status={"loss": 2.5}, tokens=1000)      # the first step (compile): not a rate
    p.update(1, status={"loss": 1.25}, tokens=500)      # 1 step in 10 s
    line = p.line()
    assert "train 2/4 steps" in line and "0.10 steps/s" in line and "50 tokens/s" in line
    assert "loss 1.25" in line and "ETA 00:20" in line


def test_progress_without_skip_counts_from_start(monkeypatch):
    clock = iter([0.0, 4.0, 4.0, 4.0, 4.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    p = progress.Progress(10, "prompts", "generate", stream=io.StringIO(), min_interval_s=0.0)
    p.update(2, tokens=40)
    assert "0.50 prompts/s" in p.line() and "10 tokens/s" in p.line()


def test_disabled_progress_counts_but_draws_nothing():
    """The non-primary hosts of a multi-host run keep count silently."""
    stream = io.StringIO()
    p = progress.Progress(4, "steps", "train", stream=stream, min_interval_s=0.0, enabled=False)
    for _ in range(4):
        p.update(1, tokens=10)
    assert stream.getvalue() == "" and p.done == 4
    assert "train 4/4 steps" in p.line()


def test_a_line_printed_beside_an_open_bar_starts_a_line_of_its_own():
    """The demo's scheduler prints while a stage's bar redraws with '\\r': it ends
    the bar's line first, once, and not after the bar has ended its own."""
    stream = io.StringIO()
    p = progress.Progress(2, "steps", "train", stream=stream, min_interval_s=0.0)
    p.update(1)
    assert "\n" not in stream.getvalue()      # the bar's line is open
    progress.end_open_line()
    progress.end_open_line()                  # nothing open any more: no blank line
    assert stream.getvalue().startswith("\rtrain 1/2 steps") and stream.getvalue().count("\n") == 1
    p.update(1)                               # the last draw ends its own line
    progress.end_open_line()
    assert stream.getvalue().count("\n") == 2 and stream.getvalue().endswith("\n")


def test_ending_the_open_line_of_a_closed_stream_is_a_no_op():
    stream = io.StringIO()
    progress.Progress(2, "steps", "train", stream=stream, min_interval_s=0.0).update(1)
    stream.close()
    progress.end_open_line()                  # the scheduler must not crash on it
