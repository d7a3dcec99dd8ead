"""The demo's report (demo/report.py) on evaluation outputs written by hand: the
claims per seed, the capacity gap, the knowledge frontier, and a study's verdicts.
Nothing here trains: the pipeline's own end-to-end run is tests/demo/test_pipeline.py."""
import json
import os

import numpy as np
import pytest

from distill_jax.demo import arithmetic, pipeline, report
from distill_jax.demo.config import demo_config

TASK = arithmetic.Task(min_steps=2, max_steps=5, max_start=9, max_operand=5, max_give=5,
                       double_below=16)


def _write_outputs(out, seed, rates_by_model, problems):
    """The files the report reads: the test split and each model's per-problem rows."""
    os.makedirs(os.path.join(out, "data"), exist_ok=True)
    with open(os.path.join(out, "data", "test_prompts.jsonl"), "w") as f:
        for k, p in enumerate(problems):
            f.write(json.dumps({"id": f"test-{k}", "problem": p.question,
                                "answer": str(p.answer)}) + "\n")
    for name, rates in rates_by_model.items():
        d = os.path.join(out, "eval", name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "per_problem.jsonl"), "w") as f:
            for k, (r, p) in enumerate(zip(rates, problems)):
                # The correct samples work the problem right, the others with the
                # misconception (doubling read as "+ 2").
                correct = int(round(4 * r))
                texts = [p.solution] * correct + [arithmetic.misread_doubles(p).solution] * (
                    4 - correct)
                f.write(json.dumps({"prompt_id": f"test-{k}", "samples": 4,
                                    "correct": correct, "texts": texts}) + "\n")
    return report.uncertainty(out, list(rates_by_model), seed)


def _seed_outputs(tmp_path, seed, n=300):
    """Made-up rates with known structure: the teacher never solves the problems
    with 5 steps; filtered solves most of what the teacher solves, unfiltered a
    third less; kd_online equals filtered; filtered beats the small student only
    on 4-step problems (on 5 steps neither solves any)."""
    problems = arithmetic.make_split(seed, 0, n, TASK)
    steps = np.array([arithmetic.num_steps(p.question) for p in problems])
    rng = np.random.default_rng(seed)
    teacher = np.where(steps == 5, 0.0, rng.choice([0.75, 1.0], size=n))
    filtered = np.where(teacher > 0, rng.choice([0.5, 0.75, 1.0], size=n), 0.0)
    unfiltered = np.where(rng.uniform(size=n) < 0.66, filtered, 0.0)
    small = np.where(steps >= 4, 0.0, filtered)
    rates = {"teacher": teacher, "answer_only": np.zeros(n), "filtered": filtered,
             "unfiltered": unfiltered, "kd_online": filtered.copy(),
             "filtered_small": small}
    out = str(tmp_path / f"seed-{seed}")
    results = _write_outputs(out, seed, rates, problems)
    results.update({"accuracy": {m: float(np.mean(r)) for m, r in rates.items()},
                    "test_problems": n, "samples_per_problem": 4, "seed": seed,
                    "training_examples": {"answer_only": 400, "unfiltered": 1600,
                                          "filtered": 1200},
                    "curves": {"filtered": [(5, 2.0), (10, 1.0)]},
                    "total_seconds": 600.0 + 30.0 * seed})
    return results, steps, rates


def test_one_seed_reports_claims_capacity_and_frontier(tmp_path):
    results, steps, rates = _seed_outputs(tmp_path, 0)
    claims = {(c["a"], c["b"]): c for c in results["comparisons"]}
    assert claims[("filtered", "unfiltered")]["shown"]
    assert claims[("filtered", "answer_only")]["shown"]
    same = claims[("kd_online", "filtered")]
    assert (same["estimate"], same["shown"]) == (0.0, False)
    assert same["verdict"] == "not shown at this size"
    # A difference the other way round is reported as such, never as shown.
    assert report.verdict({"low": -0.2, "high": -0.1}) == "reversed: b beats a"
    assert ("filtered_base", "filtered") not in claims         # that arm was not run
    # Capacity: filtered - small is 0 on the 2- and 3-step buckets, positive on 4, 0 on 5.
    capacity = results["capacity"]
    assert set(capacity) == {"2", "3", "4", "5"}
    for k in ("2", "3"):
        assert capacity[k]["larger_minus_smaller"]["estimate"] == 0.0
    assert capacity["4"]["larger_minus_smaller"]["low"] > 0.0
    assert capacity["5"]["larger_minus_smaller"]["estimate"] == 0.0
    assert capacity["4"]["teacher"] == pytest.approx(rates["teacher"][steps == 4].mean())
    # Frontier: the teacher never solves the 5-step problems, and neither does any
    # student trained on its traces; only those arms are listed.
    frontier = results["frontier"]
    assert frontier["teacher_never_solved"] == int((steps == 5).sum())
    assert set(frontier["arms"]) == {"unfiltered", "filtered", "kd_online", "filtered_small"}
    f = frontier["arms"]["filtered"]
    assert f["on_never_solved"]["estimate"] == 0.0 and f["shown"]
    assert f["on_solved"] == pytest.approx(rates["filtered"][steps < 5].mean())
    # The misconception's rate in each model's samples: its wrong samples misread
    # every doubling they reach, its right ones none.
    problems = arithmetic.make_split(0, 0, 300, TASK)
    doublings = np.array([p.question.count(" doubles ") for p in problems])
    for name, r in rates.items():
        wrong = 4 - np.round(4 * r)
        misread = results["misread_doubles"][name]
        assert misread["doublings"] == 4 * doublings.sum()
        assert misread["rate"] == pytest.approx((wrong * doublings).sum() / (4 * doublings.sum()))
    assert results["misread_doubles"]["answer_only"]["rate"] == 1.0
    table = report.format_results(results)
    assert "test samples: teacher 0." in table and "answer_only 1.000" in table
    assert "| filtered_small | 1200 |" in table
    gap = claims[("filtered", "filtered_small")]        # the capacity claim: filtered is larger
    assert gap["estimate"] > 0 and gap["shown"]
    assert "| steps | teacher | filtered_small | filtered | filtered - filtered_small |" in table
    assert f"| 4 | {capacity['4']['teacher']:.3f} | 0.000 | " in table
    assert "Knowledge frontier" in table and "| 5 |" in table


def test_a_study_states_each_claim_per_seed_and_in_every_seed(tmp_path):
    per_seed = {s: _seed_outputs(tmp_path, s)[0] for s in (0, 1, 2)}
    # In seed 2 unfiltered is as good as filtered: that claim then holds in 2 of 3 seeds.
    seed2 = per_seed[2]
    for c in seed2["comparisons"]:
        if (c["a"], c["b"]) == ("filtered", "unfiltered"):
            c.update(estimate=0.01, low=-0.02, high=0.04, shown=False)
    study = report.study_summary(per_seed)
    assert study["seeds"] == [0, 1, 2]
    claims = {(c["a"], c["b"]): c for c in study["claims"]}
    assert claims[("filtered", "answer_only")]["shown_in_every_seed"]
    verification = claims[("filtered", "unfiltered")]
    assert verification["seeds_shown"] == 2 and not verification["shown_in_every_seed"]
    assert not claims[("kd_online", "filtered")]["seeds_shown"]
    assert study["accuracy"]["filtered"]["mean"] == pytest.approx(
        np.mean([per_seed[s]["accuracy"]["filtered"] for s in (0, 1, 2)]))
    assert study["frontier_shown_in_every_seed"]["filtered"]
    table = report.format_study(study)
    assert "| traces beat answers: filtered beats answer-only (filtered - answer_only) |" in table
    assert "shown in every seed |" in table and "shown in 2 of 3 seeds |" in table
    assert "not shown at this size |" in table
    # Each seed's wall clock, and the study's.
    assert study["seconds"] == {"0": 600.0, "1": 630.0, "2": 660.0}
    assert "Wall clock: seed 0 600 s, seed 1 630 s, seed 2 660 s; 31.5 min in all." in table
    assert study["reused_stages"] == {} and "reused" not in table
    # A resumed study says which stages its clock does not count.
    per_seed[2]["reused_stages"] = ["teacher", "generate"]
    resumed = report.study_summary(per_seed)
    assert resumed["reused_stages"] == {"2": ["teacher", "generate"]}
    assert "seed 2 reused 2 stages (teacher, generate)." in report.format_study(resumed)
    per_seed[2]["reused_stages"] = [f"student:{k}" for k in range(6)]
    assert "seed 2 reused 6 stages." in report.format_study(report.study_summary(per_seed))
    del per_seed[2]["reused_stages"]
    # If seed 1's unfiltered arm beat filtered, the claim is reversed there.
    for c in per_seed[1]["comparisons"]:
        if (c["a"], c["b"]) == ("filtered", "unfiltered"):
            c.update(estimate=-0.08, low=-0.11, high=-0.05, shown=False)
    mixed = report.format_study(report.study_summary(per_seed))
    assert "shown in 1 of 3 seeds; reversed (b beats a) in 1 of 3 |" in mixed
    path = tmp_path / "study.png"
    report.plot_study(study, str(path))
    assert path.stat().st_size > 10_000


def test_a_study_runs_every_seed_in_its_own_directory(tmp_path, monkeypatch):
    """`config.seeds`: the pipeline once per seed under output_dir/seed-<s> (stubbed
    here with the made-up outputs), then study.{json,md,png}. The seeds share one
    compilation cache: they run the same programs."""
    seen = []

    def fake_seed(config, out, xla_cache):
        assert xla_cache == str(tmp_path / "study" / "xla_cache")
        seen.append((config.seed, out))
        return _seed_outputs(tmp_path / "fake", config.seed)[0]
    monkeypatch.setattr(pipeline, "_run_seed", fake_seed)
    config = demo_config()
    config.output_dir = str(tmp_path / "study")
    config.seeds = (3, 5)
    study = pipeline.run(config)
    assert seen == [(3, str(tmp_path / "study" / "seed-3")), (5, str(tmp_path / "study" /
                                                                     "seed-5"))]
    assert study["seeds"] == [3, 5]
    assert json.loads((tmp_path / "study" / "study.json").read_text())["seeds"] == [3, 5]
    assert "seed 3 | seed 5" in (tmp_path / "study" / "study.md").read_text()
    assert (tmp_path / "study" / "study.png").exists()


def test_the_base_corpus_is_correct_arithmetic_and_no_word_problem(tmp_path):
    config = demo_config()
    config.base.examples = 50
    path = pipeline._base_corpus(config, str(tmp_path))
    rows = [json.loads(line) for line in open(path)]
    assert len(rows) == 50 and {r["prompt"] for r in rows} == {pipeline.BASE_PROMPT}
    task = arithmetic.Task.from_config(config.task)
    for row in rows:
        lines = row["response"].split("\n")
        assert len(lines) == config.base.equations_per_example
        for line in lines:
            a, op, b, _, c = line.rstrip(".").split()
            assert int(c) == {"+": int(a) + int(b), "-": int(a) - int(b),
                              "*": int(a) * int(b)}[op], line
            assert int(c) >= 0 and (op != "*" or int(a) < task.double_below)
        assert "Then" not in row["response"] and "boxed" not in row["response"]
    # Deterministic: a second call (after removing the file) writes the same bytes.
    first = open(path).read()
    os.remove(path)
    assert open(pipeline._base_corpus(config, str(tmp_path))).read() == first


def test_bad_task_sizes_and_missing_student_sizes_are_refused_before_any_stage(tmp_path):
    config = demo_config()
    config.output_dir = str(tmp_path / "demo")
    config.task.min_steps = 6
    with pytest.raises(ValueError, match="need 1 <= min_steps <= max_steps, got 6 and 5"):
        pipeline.run(config)
    config = demo_config()
    config.output_dir = str(tmp_path / "demo")
    config.arms = ("filtered", "filtered_small")
    del config.student_sizes["small"]
    with pytest.raises(ValueError, match="filtered_small needs config.student_sizes.small"):
        pipeline.run(config)
    config = demo_config()
    config.output_dir = str(tmp_path / "demo")
    config.arms = ("filtered", "filtered_base")             # make demo's config has no base
    with pytest.raises(ValueError, match="filtered_base starts from the base, but "
                                         "config.base.train.num_steps is 0"):
        pipeline.run(config)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['steps'\]"):
        arithmetic.Task.from_config({"steps": 3})
    assert not os.path.exists(tmp_path / "demo")


def test_the_demo_task_keeps_its_numbers_small_and_grades_difficulty():
    task = arithmetic.Task.from_config(demo_config().task)
    problems = arithmetic.make_split(0, 0, 2000, task)
    steps = [arithmetic.num_steps(p.question) for p in problems]
    assert set(steps) == set(range(task.min_steps, task.max_steps + 1))
    assert all(p.answer >= 0 for p in problems)
    for p in problems[:200]:
        for line in p.solution.splitlines()[1:-1]:
            a, op, b, _, c = line.rstrip(".").split()
            assert (op != "+" or int(b) <= task.max_operand)
            assert (op != "-" or int(b) <= task.max_give)
            assert (op != "*" or int(a) < task.double_below)


def test_no_training_problem_is_a_numeric_twin_of_a_test_problem(tmp_path):
    """With small numbers short chains recur under other names; the training splits
    skip every problem whose worked solution is a test problem's."""
    config = demo_config()
    config.data.update(teacher_problems=1500, train_prompts=300, test_problems=300)
    paths = pipeline._prepare_data(config, str(tmp_path))
    test_steps = {s.rsplit("\n", 1)[0] for s in pipeline._test_solutions(config)}
    assert len(test_steps) > 250
    rows = [json.loads(line) for line in open(paths["teacher_sft"])]
    assert len(rows) == 1500
    steps = [r["response"].split("<think>\n")[1].split("\n</think>")[0] for r in rows]
    assert not test_steps & set(steps)
    # Without the exclusion many would be: the check above is not vacuous.
    task = arithmetic.Task.from_config(config.task)
    unfiltered = {p.solution.rsplit("\n", 1)[0] for p in arithmetic.make_split(0, 0, 1500, task)}
    assert len(test_steps & unfiltered) > 50
    train = [json.loads(line)["problem"] for line in open(paths["train_prompts"])]
    test = {json.loads(line)["problem"] for line in open(paths["test_prompts"])}
    assert len(train) == 300 and not test & set(train)
