"""demo/stage_times.py: a stage's build time survives the reruns that reuse it."""
import json

import pytest

from distill_jax.demo.stage_times import FILE, StageTimes

JOBS = ["student:a", "eval:a"]


def test_a_rerun_reports_the_time_a_stage_took_to_build(tmp_path):
    first = StageTimes(str(tmp_path))
    first.built("teacher", 161.53)
    first.built("student:a", 40.0, resumed=True)      # finished from its checkpoint
    first.built("students and evaluations", 1198.6, parts=JOBS)
    # Written as each stage finishes: a run that stops later keeps it.
    saved = json.loads((tmp_path / FILE).read_text())
    assert saved["seconds"]["teacher"] == 161.5 and saved["resumed"] == ["student:a"]
    assert first.report() == {
        "stage_seconds": {"teacher": 161.5, "student:a": 40.0,
                          "students and evaluations": 1198.6},
        "reused_stages": [], "resumed_stages": ["student:a"]}

    rerun = StageTimes(str(tmp_path))
    rerun.reuse("teacher")
    rerun.reuse("teacher")
    rerun.reuse("tokenizer")          # built before the file existed: no time, not 0 s
    rerun.reuse("student:a")          # still only the resumed part's time
    rerun.reuse("students and evaluations", parts=JOBS)
    rerun.built("generate", 64.9)
    assert rerun.report() == {
        "stage_seconds": {"teacher": 161.5, "student:a": 40.0,
                          "students and evaluations": 1198.6, "generate": 64.9},
        "reused_stages": ["teacher", "tokenizer", "student:a", "students and evaluations"],
        "resumed_stages": ["student:a"]}
    # Only this run's stages are reported: a stage of another arm set is not.
    other = StageTimes(str(tmp_path))
    other.reuse("teacher")
    assert other.report()["stage_seconds"] == {"teacher": 161.5}


def test_a_phase_time_is_dropped_for_other_parts_or_a_partial_redo(tmp_path):
    times = StageTimes(str(tmp_path))
    times.built("students and evaluations", 600.0, parts=JOBS)
    times.built("student:a", 300.0, resumed=True)
    times.built("student:a", 310.0)                  # rebuilt whole: no longer resumed
    again = StageTimes(str(tmp_path))
    again.reuse("students and evaluations", parts=JOBS + ["student:b", "eval:b"])
    again.reuse("student:a")
    assert again.report()["stage_seconds"] == {"student:a": 310.0}
    assert again.report()["resumed_stages"] == []
    times = StageTimes(str(tmp_path))
    times.built("students and evaluations", 600.0, parts=JOBS)
    times.forget("students and evaluations")         # a run that redid part of it
    assert "students and evaluations" not in StageTimes(str(tmp_path)).seconds


def test_the_first_versions_file_is_read(tmp_path):
    """An output directory from before `resumed` and `parts`: its times are kept."""
    (tmp_path / FILE).write_text('{"teacher": 161.5, "students and evaluations": 1198.6}')
    times = StageTimes(str(tmp_path))
    times.reuse("teacher")
    times.reuse("students and evaluations", parts=JOBS)   # no parts recorded: not these
    assert times.report() == {"stage_seconds": {"teacher": 161.5},
                              "reused_stages": ["teacher", "students and evaluations"],
                              "resumed_stages": []}


@pytest.mark.parametrize("text", ["[1, 2]", '{"teacher": null}', "{", '{"seconds": {"a": null}, '
                                  '"resumed": [], "parts": {}}'])
def test_a_broken_times_file_is_named(tmp_path, text):
    (tmp_path / FILE).write_text(text)
    with pytest.raises(ValueError, match=f"{FILE}: not this pipeline's record of stage times"):
        StageTimes(str(tmp_path))
