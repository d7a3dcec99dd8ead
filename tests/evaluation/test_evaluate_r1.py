"""`distill-evaluate` the way the R1 paper reports: several benchmarks in one run, the
combined table, settings recorded, numbers that do not depend on how the run is cut
(benchmarks together or apart, chunks, batch size, mesh), and kill-and-resume."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from configs import evaluate_gsm8k
from distill_jax.evaluation.config import benchmark, benchmarks
from distill_jax.evaluation.runner import evaluate
from tests.overrides import apply_overrides
from tests.tiny_models import arithmetic_tokenizer, tiny_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A tiny random Qwen2-shaped checkpoint and a sentencepiece tokenizer."""
    root = tmp_path_factory.mktemp("student")
    sp = arithmetic_tokenizer(root, problems=300)
    # Room for MATH-500 and AIME problems in a 400-piece vocabulary; 4 KV heads, which a
    # tensor axis of 4 shards.
    tiny_checkpoint(root / "ckpt", 400, max_position_embeddings=4096, num_kv_heads=4)
    return root / "ckpt", sp


def _config(student, shared_data, out, names=("gsm8k", "math500", "aime24"), **overrides):
    ckpt, sp = student
    files = {"gsm8k": ("gsm8k_test.jsonl", 3), "math500": ("math500_test.jsonl", 2),
             "aime24": ("aime24_test.jsonl", 2)}
    c = evaluate_gsm8k.get_config()
    c.benchmarks = benchmarks(**{
        name: benchmark(str(shared_data / files[name][0]), name, k=2, limit=files[name][1])
        for name in names})
    c.model.checkpoint, c.tokenizer.path = str(ckpt), sp
    c.model.dtype = c.model.param_dtype = "float32"
    c.sampling.max_new_tokens, c.sampling.temperature = 8, 1.0
    c.output_dir, c.num_slots, c.mesh = str(out), 4, None
    return apply_overrides(c, overrides)


def _texts(out, name):
    return [json.loads(line)["texts"] for line in open(out / name / "per_problem.jsonl")]


@pytest.fixture(scope="module")
def together(student, shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("together")
    return out, evaluate(_config(student, shared_data, out))


def test_three_benchmarks_in_one_run_write_the_combined_table(together):
    out, report = together
    assert list(report["benchmarks"]) == ["gsm8k", "math500", "aime24"]
    for name, problems in (("gsm8k", 3), ("math500", 2), ("aime24", 2)):
        s = json.loads((out / name / "summary.json").read_text())
        assert s["problems"] == problems and s["samples_per_problem"] == 2
        assert "pass@1_stderr" in s and s["cons@2"] is not None
        assert not (out / name / "partial.jsonl").exists()
    table = (out / "summary.md").read_text()
    assert "gsm8k pass@1" in table and "aime24 cons@2" in table and "± s.e." in table
    assert (out / "pass_at_k.png").stat().st_size > 1000
    settings = json.loads((out / "settings.json").read_text())
    assert settings["sampling"]["temperature"] == 1.0
    assert settings["benchmarks"]["math500"]["k"] == 2


def test_the_numbers_equal_separate_single_benchmark_runs(together, student, shared_data,
                                                        tmp_path):
    out, report = together
    for name in ("gsm8k", "aime24"):
        alone = tmp_path / name
        single = evaluate(_config(student, shared_data, alone, names=(name,)))
        assert _texts(alone, name) == _texts(out, name)
        assert single["benchmarks"][name] == report["benchmarks"][name]


def test_the_numbers_do_not_depend_on_batch_chunks_or_mesh(together, student, shared_data,
                                                          tmp_path):
    out, report = together
    other = evaluate(_config(student, shared_data, tmp_path, names=("gsm8k",), num_slots=2,
                             resume_chunk=1,
                             mesh={"data": 2, "fsdp": 1, "expert": 1, "tensor": 4}))
    assert _texts(tmp_path, "gsm8k") == _texts(out, "gsm8k")
    assert other["benchmarks"]["gsm8k"] == report["benchmarks"]["gsm8k"]


def test_a_rerun_with_other_settings_is_refused(together, student, shared_data, monkeypatch):
    out, _ = together
    with pytest.raises(ValueError, match=r"sampling\.temperature: 1\.0 -> 0\.6"):
        evaluate(_config(student, shared_data, out, **{"sampling.temperature": 0.6}))
    # The same settings: every benchmark is already written, nothing is sampled again.
    from distill_jax.sampling import sampler

    def no_sampling(*args, **kwargs):
        raise AssertionError("a finished benchmark was sampled again")

    monkeypatch.setattr(sampler.Sampler, "generate", no_sampling)
    again = evaluate(_config(student, shared_data, out))
    assert again["benchmarks"] == together[1]["benchmarks"]


def test_a_killed_run_resumes_to_the_same_table(together, student, shared_data, tmp_path):
    out, report = together
    ckpt, sp = student
    cmd = [sys.executable, "-m", "distill_jax.cli.evaluate",
           f"--config={REPO}/configs/evaluate_gsm8k.py",
           f"--config.model.checkpoint={ckpt}", f"--config.tokenizer.path={sp}",
           f"--config.benchmarks.gsm8k.path={shared_data / 'gsm8k_test.jsonl'}",
           "--config.benchmarks.gsm8k.limit=3", "--config.benchmarks.gsm8k.k=2",
           "--config.sampling.max_new_tokens=8", "--config.sampling.temperature=1.0",
           "--config.resume_chunk=1", f"--config.output_dir={tmp_path}", "--config.num_slots=8",
           "--config.model.dtype=float32", "--config.model.param_dtype=float32"]
    partial = tmp_path / "gsm8k" / "partial.jsonl"
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (partial.exists() and partial.read_text().count("\n") >= 1):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = partial.read_text().count("\n")
    assert 1 <= done < 3
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _texts(tmp_path, "gsm8k") == _texts(out, "gsm8k")
    summary = json.loads((tmp_path / "gsm8k" / "summary.json").read_text())
    assert summary == report["benchmarks"]["gsm8k"]
    assert "problems/s" in rerun.stderr and "ETA" in rerun.stderr


def test_a_prompt_too_long_for_the_model_is_refused_before_the_weights_load(student,
                                                                         shared_data, tmp_path):
    c = _config(student, shared_data, tmp_path, names=("aime24",))
    c.sampling.max_new_tokens = 4000           # the checkpoint has 4096 positions
    with pytest.raises(ValueError, match=r"benchmarks\.aime24: problem .* prompt tokens; "
                                         r"with max_new_tokens=4000 .* 4096 positions"):
        evaluate(c)


def test_a_torn_partial_line_is_cut_so_resume_goes_on(tmp_path):
    from distill_jax.data.prompts import Prompt
    from distill_jax.evaluation.runner import ProblemResult, _append_finished, _finished
    prompts = [Prompt(f"p{i}", "q", "math", "s", {"answer": "1"}) for i in range(3)]
    done = [ProblemResult(f"p{i}", "math", 1, 0, [None], ["no_answer"], ["t"], ["length"], False)
            for i in range(3)]
    _append_finished(str(tmp_path), done[:1])
    with open(tmp_path / "partial.jsonl", "a") as f:
        f.write(json.dumps(dataclasses.asdict(done[1]))[:20])     # killed mid-line
    assert [r.prompt_id for r in _finished(str(tmp_path), prompts)] == ["p0"]
    _append_finished(str(tmp_path), done[1:])                       # the resumed chunks
    assert [r.prompt_id for r in _finished(str(tmp_path), prompts)] == ["p0", "p1", "p2"]


def test_settings_a_new_benchmark_may_join_a_changed_one_may_not(tmp_path):
    from distill_jax.evaluation.runner import _record_settings
    base = {"model": {"checkpoint": "/m"}, "sampling": {"seed": 0},
            "benchmarks": {"a": {"k": 2}}}
    _record_settings(str(tmp_path), base)
    _record_settings(str(tmp_path), dict(base, benchmarks={"b": {"k": 4}}))
    assert set(json.loads((tmp_path / "settings.json").read_text())["benchmarks"]) == {"a", "b"}
    with pytest.raises(ValueError, match=r"benchmarks\.a\.k: 2 -> 3"):
        _record_settings(str(tmp_path), dict(base, benchmarks={"a": {"k": 3}}))


def test_choice_problems_need_their_options(tmp_path):
    from distill_jax.data.prompts import load_prompts
    path = tmp_path / "mc.jsonl"
    path.write_text('{"id": "1", "problem": "?", "answer": "B"}\n')
    with pytest.raises(ValueError, match="format 'gpqa'"):
        load_prompts(str(path), "jsonl", kind="choice")
