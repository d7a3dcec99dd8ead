"""The demo study: every arm of the demo pipeline under three seeds.

  distill-pipeline --config=configs/demo_study.py       # ~1 h on 2 Intel Xeon cores (60.0 min measured)

Each seed re-runs every stage (the task's problems and splits, the tokenizer,
the teacher, its samples, every student, the evaluation) under
`output_dir/seed-<s>`; study.{json,md,png} put the seeds side by side: pass@1
per model with 95% intervals, each claim's paired interval per seed and whether
it holds in every seed, accuracy by difficulty, the capacity gap and the
knowledge frontier. Every arm's three seeds at this config (answer-only in rows
of 144 tokens), from one `make study` in a fresh clone on an Intel CPU, are
committed under docs/demo_study/answer_only_144/ (README, "Now: answer-only rows
of 144"); with answer-only in rows of 224 (the teacher's misconception at 0.3 in
both), under docs/demo_study/misconception_030/ (README, "Misconception 0.3"); at
0.35, under docs/demo_study/intel_make_study_small64/
(README, "The study at this config"). The config before that, which also
trained a 192-wide filtered_large and a 96 x 3 small student, under
docs/demo_study/ (AMD, pieced together from several invocations) and
docs/demo_study/intel_make_study/ (one `make study`); the one before that
(students of 420 steps) under docs/demo_study/students_420/; the core arms
trained a second time under other float rounding (one XLA thread) and rerun
from scratch on an Intel CPU under docs/demo_study/float_rounding/.

Same sizes as `make demo` (configs/demo_cpu.py), every student from random init
as there, plus the arms that make the remaining claims: kd_offline and on_policy
(soft targets), filtered_base (base matters: filtered SFT from a base pre-trained
on worked arithmetic), filtered_small (capacity gap: a 64 x 2 student against
the filtered arm's 128 x 4).
"""
from distill_jax.demo import pipeline
from distill_jax.demo.config import demo_config


def get_config():
    c = demo_config()
    c.output_dir = "artifacts/demo_study"
    c.arms = pipeline.ARMS
    c.seeds = (0, 1, 2)
    c.base.train.num_steps = 150       # the filtered_base arm's pre-trained base
    c.quick_settings.output_dir = "artifacts/demo_study_quick"
    c.quick_settings.seeds = (0, 1)
    return c
