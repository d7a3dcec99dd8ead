"""demo/stage_times.py: a stage's build time survives the reruns that reuse it."""
import json

import pytest

from distill_jax.demo.stage_times import FILE, StageTimes


def test_a_rerun_reports_the_time_a_stage_took_to_build(tmp_path):
    first = StageTimes(str(tmp_path))
    first.built("teacher", 161.53)
    first.built("students and evaluations", 1198.6)
    # Written as each stage finishes: a run that stops later keeps it.
    assert json.loads((tmp_path / FILE).read_text()) == {
        "teacher": 161.5, "students and evaluations": 1198.6}
    rerun = StageTimes(str(tmp_path))
    rerun.reuse("teacher")
    rerun.reuse("teacher")
    rerun.reuse("tokenizer")          # built before the file existed: no time, not 0 s
    rerun.forget("students and evaluations")   # only partly redone: no single time
    rerun.built("generate", 64.9)
    assert rerun.reused == ["teacher", "tokenizer"]
    assert rerun.report() == {"teacher": 161.5, "generate": 64.9}
    assert StageTimes(str(tmp_path)).report() == rerun.report()


def test_a_broken_times_file_is_named(tmp_path):
    (tmp_path / FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match=f"{FILE}: not a JSON object of stage -> seconds"):
        StageTimes(str(tmp_path))
