"""`make demo` run twice from scratch gives the identical table (issue 20): a tiny
pipeline, in its own module so that it runs beside the quick pipeline's."""
import json
import os
import subprocess
import sys

from tests.compile_cache import compile_cache_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_TINY_RUN = """
import sys
from configs import demo_cpu
from distill_jax.demo import pipeline
config = demo_cpu.get_config()
config.quick = True
q = config.quick_settings
q.output_dir = sys.argv[1]
q.arms = ("answer_only", "filtered")
q.data.update(teacher_problems=200, train_prompts=12, test_problems=8)
q.teacher.num_steps = 12
# The student has the teacher's shape: its training and evaluation load the programs
# compiled for the teacher.
q.student.update(num_steps=6, hidden_size=128, intermediate_size=384, num_layers=4,
                 head_dim=32)
q.evaluate.k = 2
pipeline.run(config)
"""


def test_the_pipeline_run_twice_from_scratch_gives_the_same_results(tmp_path):
    """`make demo` twice gives the identical table: every stage is seeded (problems,
    tokenizer, inits, data order, per-row sampling, bootstrap). Two processes, each
    from an empty directory. They share a compile cache (the second loads the binary
    the first compiled): what differs between a run and its rerun on one machine is
    the seeding and the data order, which the cache does not touch."""
    env = dict(os.environ, **compile_cache_env(tmp_path / "jax_cache"), PYTHONPATH=REPO)
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        proc = subprocess.run([sys.executable, "-c", _TINY_RUN, str(out)], env=env, cwd=REPO,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = (json.loads((out / "results.json").read_text()) for out in runs)
    for r in (first, second):
        del r["stage_seconds"], r["total_seconds"]
    assert first == second
    assert (runs[0] / "results.md").read_text() == (runs[1] / "results.md").read_text()
    # The stages' own outputs, byte for byte: the teacher's samples, the filters'
    # verdicts per prompt and the curated set (empty: a 12-step teacher is at chance,
    # so kept samples are tested in tests/filters/test_filter_streaming.py), every
    # evaluated sample; and the student's losses step by step.
    for name in ("traces/shard-00000-of-00001.jsonl", "curated/per_prompt.jsonl",
                 "curated/curated.jsonl", "eval/teacher/per_problem.jsonl",
                 "eval/answer_only/per_problem.jsonl"):
        assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes(), name
    a, b = ([json.loads(line)["loss"] for line in open(out / "students/answer_only/metrics.jsonl")]
            for out in runs)
    assert a == b and len(a) == 2                       # logged at steps 5 and 6
    assert first["training_examples"]["unfiltered"] == 12 * 2
    assert len((runs[0] / "traces/shard-00000-of-00001.jsonl").read_text().splitlines()) == 24
