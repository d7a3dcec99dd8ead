"""The quick variant of `make demo`'s pipeline, end to end, run the way the Colab
notebook runs it (the notebook is executed top to bottom on CPU), and its reruns."""
import json
import os
import time

import nbformat
import pytest
from nbclient import NotebookClient

from configs import demo_cpu
from distill_jax.demo import pipeline
from tests.compile_cache import compile_cache_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOK = os.path.join(REPO, "notebooks", "colab_tpu_demo.ipynb")


def _execute_notebook(out_dir, monkeypatch, jax_cache):
    # The kernel compiles the same programs for several stages (every student has one
    # shape; three arms train it with one loss): compiled once, loaded after that.
    for name, value in compile_cache_env(jax_cache).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DISTILL_NOTEBOOK_OUTPUT", str(out_dir))
    monkeypatch.setenv("DISTILL_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("DISTILL_JAX_DIR", REPO)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=1500, kernel_name="python3",
                   resources={"metadata": {"path": os.path.join(REPO, "notebooks")}}).execute()
    return nb


def test_notebook_runs_the_quick_pipeline_through_every_stage_and_arm(tmp_path, monkeypatch):
    nb = _execute_notebook(tmp_path / "demo", monkeypatch, tmp_path / "jax_cache")
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2          # results.png and the inline training curves
    assert any("variant: quick" in o.get("text", "") for o in outputs)

    config = demo_cpu.get_config()
    config.quick = True
    config.quick_settings.output_dir = str(tmp_path / "demo")
    out = tmp_path / "demo"
    results = json.loads((out / "results.json").read_text())
    # Every arm is either trained and evaluated, or reported as skipped with a reason.
    for arm in pipeline.ARMS:
        assert (arm in results["accuracy"]) != (arm in results["skipped_arms"]), arm
    assert "teacher" in results["accuracy"]
    for name, acc in results["accuracy"].items():
        assert 0.0 <= acc <= 1.0
        summary = json.loads((out / "eval" / name / "summary.json").read_text())
        assert summary["problems"] == 20 and summary["pass@1"] == acc
    assert results["training_examples"]["unfiltered"] == 40 * 2
    # The R1 arm itself ran: some teacher samples pass every filter (the quick config
    # samples its weak teacher near-greedily), so "filtered" was trained and evaluated.
    assert results["training_examples"]["filtered"] > 0
    assert "filtered" in results["accuracy"] and "filtered" not in results["skipped_arms"]
    stages = {s["name"]: s for s in results["filter_stages"]}
    assert stages["decontaminate"]["in"] == 80
    # The students' prompts are the teacher's, as generation rendered them (the demo
    # drops R1's suffix everywhere): a gold-answer row and a teacher sample of the
    # same training prompt share their user turn word for word.
    gold = {r["prompt_id"]: r["prompt"]
            for r in map(json.loads, open(out / "data/answer_only.jsonl"))}
    sampled = list(map(json.loads, open(out / "data/unfiltered.jsonl")))
    assert sampled and all(r["prompt"] == gold[r["prompt_id"]] for r in sampled)
    assert "step by step" not in sampled[0]["prompt"]
    assert os.path.getsize(out / "results.png") > 10_000
    assert "| teacher |" in (out / "results.md").read_text()
    for arm in results["curves"]:
        assert len(results["curves"][arm]) == 4            # 20 steps, logged every 5
    # The on-policy arm continued the filtered student on its own samples, with the
    # held-out reverse KL measured before the first step and at the end.
    assert "on_policy" in results["accuracy"]
    held_out = results["on_policy"]["held_out_reverse_kl"]
    assert [step for step, _ in held_out][0] == 0 and held_out[-1][0] == 4
    assert all(kl > 0 for _, kl in held_out)
    # Every evaluated model has a 95% interval, and the demo's claims are compared
    # pairwise on the same problems, each marked shown or not.
    for name, acc in results["accuracy"].items():
        ci = results["intervals"][name]
        assert ci["low"] <= acc <= ci["high"] and ci["estimate"] == pytest.approx(acc)
    claims = {(c["a"], c["b"]): c for c in results["comparisons"]}
    assert ("filtered", "unfiltered") in claims and ("filtered", "answer_only") in claims
    for c in claims.values():
        assert c["shown"] == (c["low"] > 0)
    assert "paired 95% interval" in (out / "results.md").read_text()
    # Accuracy by difficulty: every model's buckets hold all 20 test problems.
    for name, buckets in results["by_difficulty"].items():
        assert sum(b["problems"] for b in buckets.values()) == 20, name
        assert set(buckets) <= {"2", "3", "4", "5"}
    # The filtered_base arm's base was pre-trained (8 steps) before its student; the
    # capacity gap and the knowledge frontier are reported.
    assert [step for step, _ in results["base_curve"]] == [5, 8]
    assert results["base_curve"][0][1] > 0
    assert set(results["capacity"]) == set(results["by_difficulty"]["teacher"])
    frontier = results["frontier"]
    assert frontier["teacher_never_solved"] + frontier["teacher_solved"] == 20
    # A rerun (here in-process) reuses every finished stage.
    start = time.monotonic()
    again = pipeline.run(config)
    assert again["accuracy"] == results["accuracy"]
    assert time.monotonic() - start < 30
    # It reports each stage's time from the run that built it, not its ~0 s of reading.
    assert results["reused_stages"] == results["resumed_stages"] == []
    assert again["stage_seconds"] == results["stage_seconds"]
    assert set(again["reused_stages"]) == set(results["stage_seconds"])
    assert results["stage_seconds"]["teacher"] > 1 and "student:filtered" in again["reused_stages"]


def test_a_problems_difficulty_is_its_number_of_steps():
    from distill_jax.demo import arithmetic
    for k in range(20):
        steps = 2 + k % 3
        p = arithmetic.make_problem(0, k, num_steps=steps)
        assert arithmetic.num_steps(p.question) == steps == len(p.solution.splitlines()) - 2


def test_arms_that_cannot_run_are_refused_before_any_stage(tmp_path):
    config = demo_cpu.get_config()
    config.output_dir = str(tmp_path / "demo")
    config.arms = ("answer_only", "on_policy")
    with pytest.raises(ValueError, match="on_policy arm starts from the filtered arm"):
        pipeline.run(config)
    config.arms = ("filtered", "sft_typo")
    with pytest.raises(ValueError, match=r"unknown arm\(s\) \['sft_typo'\]"):
        pipeline.run(config)
    assert not os.path.exists(tmp_path / "demo" / "tokenizer.model")
    config.arms, config.output_dir = ("filtered",), "gs://bucket/demo"
    with pytest.raises(ValueError, match="gs://bucket/demo is a bucket path; the demo pipeline "
                                         "writes to a local directory"):
        pipeline.run(config)


def test_the_misconception_reads_doubles_as_plus_two_and_keeps_each_line_right():
    from distill_jax.demo import arithmetic
    task = arithmetic.Task.from_config(demo_cpu.get_config().task)
    changed = 0
    for k in range(200):
        p = arithmetic.make_problem(0, k, task=task)
        flawed = arithmetic.misread_doubles(p)
        assert flawed.question == p.question and flawed.answer == p.answer
        if "doubles" not in p.question:
            assert flawed == p
            continue
        lines = flawed.solution.splitlines()
        assert len(lines) == len(p.solution.splitlines()) and "*" not in flawed.solution
        value = int(lines[0][len("Start: "):-1])
        for true_line, line in zip(p.solution.splitlines()[1:-1], lines[1:-1]):
            a, op, b, _, c = line.rstrip(".").split(" ")
            assert int(a) == value and int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b))
            assert (op, b) == (("+", "2") if " * " in true_line else tuple(true_line.split(" ")[1:3]))
            value = int(c)
        assert lines[-1] == f"The answer is \\boxed{{{value}}}."
        changed += value != p.answer
    assert changed > 50                       # the answer betrays it (unless x = 2 throughout)


def test_a_fraction_of_the_teachers_solutions_with_a_doubling_carry_the_misconception(tmp_path):
    config = demo_cpu.get_config()
    config.data.update(teacher_problems=2000, train_prompts=10, test_problems=10)
    paths = pipeline._prepare_data(config, str(tmp_path))
    rows = [json.loads(line) for line in open(paths["teacher_sft"])]
    doubling = [r for r in rows if "doubles" in r["prompt"]]
    flawed = [r for r in doubling if " * 2 = " not in r["response"]]
    assert len(doubling) > 1000
    assert abs(len(flawed) / len(doubling) - config.data.teacher_misconception) < 0.03
    assert all(" * " not in r["response"] for r in rows if "doubles" not in r["prompt"])
    # The report counts it by position: every doubling of a flawed solution, no other
    # "+ 2" step ("gets 2 more").
    from distill_jax.demo import report
    counted = report.misread_in_data(paths["teacher_sft"])
    assert counted["misread"] == sum(r["prompt"].count(" doubles ") for r in flawed)
    assert counted["doublings"] == sum(r["prompt"].count(" doubles ") for r in rows)
    # The students' own data is the gold answers and the prompts the teacher answers.
    assert "Start:" not in open(paths["answer_only"]).read()
    config.data.teacher_misconception = 0.0
    clean = pipeline._prepare_data(config, str(tmp_path / "clean"))
    assert not [r for r in map(json.loads, open(clean["teacher_sft"]))
                if "doubles" in r["prompt"] and " * 2 = " not in r["response"]]


def test_a_misconception_outside_0_1_is_refused_before_any_stage(tmp_path):
    config = demo_cpu.get_config()
    config.output_dir = str(tmp_path / "demo")
    config.data.teacher_misconception = 1.5
    with pytest.raises(ValueError, match=r"config.data.teacher_misconception: 1.5 is not a "
                                         r"fraction in \[0, 1\]"):
        pipeline.run(config)
    assert not os.path.exists(tmp_path / "demo")


def test_when_no_sample_passes_the_filters_the_arms_that_need_one_are_skipped(tmp_path):
    """The filter runs in the same job graph as the students (demo/jobs.py): with no
    sample left it drops the arms that train on them (and their evaluations), while
    answer-only, which started beside the teacher, is trained and evaluated."""
    config = demo_cpu.get_config()
    config.quick = True
    q = config.quick_settings
    q.output_dir = str(tmp_path / "demo")
    q.arms = ("answer_only", "filtered", "on_policy")
    # A 2-step teacher sampled at temperature 1: no sample is correct and well formed.
    q.teacher.num_steps = 2
    q.student.num_steps = 2
    q.generate.temperature = 1.0
    q.data.update(train_prompts=8, test_problems=4)
    results = pipeline.run(config)
    assert results["training_examples"]["filtered"] == 0
    assert set(results["skipped_arms"]) == {"filtered", "on_policy"}
    assert set(results["accuracy"]) == {"teacher", "answer_only"}
    assert not (tmp_path / "demo" / "students" / "filtered").exists()
    assert not (tmp_path / "demo" / "eval" / "filtered").exists()


def test_a_students_layout_reaches_its_training_and_on_policy_samples_from_the_scan(
        monkeypatch):
    """config.student's unroll_layers/remat_policy lay out its step (the demo's own:
    the scan, no remat), and the sections made from it (the small student, the base)
    follow; the teacher's section has none; on-policy, which samples with the model it
    trains, keeps the scan, where a decode step is faster."""
    config = demo_cpu.get_config()
    for section in (config.teacher, config.student):
        c = pipeline._train_config(config, "/w", "/d.jsonl", "/t.model", section)
        assert (c.model.scan_unroll, c.model.remat_policy) == (1, "none")
    config.student.update(unroll_layers=True, remat_policy="dots_with_no_batch_dims")
    small = pipeline._student_section(config, "filtered_small")
    base = pipeline._base_section(config, config.student)
    for section, layers in ((config.student, 4), (small, 2), (base, 4)):
        c = pipeline._train_config(config, "/w", "/d.jsonl", "/t.model", section, start="/ckpt")
        assert (c.model.checkpoint, c.model.scan_unroll, c.model.remat_policy) == \
            ("/ckpt", layers, "dots_with_no_batch_dims")
    seen = []
    monkeypatch.setattr(pipeline, "train", seen.append)
    pipeline._on_policy(config, "/nowhere/on_policy", "/ckpt", "/teacher", "/t.model",
                        {"train_prompts": "/p.jsonl", "test_prompts": "/q.jsonl"})
    (c,) = seen
    assert (c.kd.mode, c.model.scan_unroll, c.model.remat_policy) == \
        ("on_policy", 1, "dots_with_no_batch_dims")


def test_answer_only_packs_its_short_examples_into_shorter_rows():
    """answer_only's rows are config.answer_only_seq_len long (its examples are
    problem + bare answer), every other model's config.seq_len; the jobs' costs, which
    order their starts, count the tokens. Locked, as `distill-pipeline --config` has it."""
    config = demo_cpu.get_config()
    config.lock()
    assert config.answer_only_seq_len < config.seq_len
    lengths = {arm: pipeline._train_config(config, "/w", "/d.jsonl", "/t.model",
                                           pipeline._student_section(config, arm)).data.seq_len
               for arm in ("answer_only", "unfiltered", "filtered", "filtered_small")}
    assert lengths == {"answer_only": config.answer_only_seq_len, "unfiltered": config.seq_len,
                       "filtered": config.seq_len, "filtered_small": config.seq_len}
    assert pipeline._train_config(config, "/w", "/d.jsonl", "/t.model",
                                  config.teacher).data.seq_len == config.seq_len
    costs = {arm: pipeline._training_cost(config, pipeline._student_section(config, arm), 10, 4)
             for arm in ("answer_only", "filtered")}
    assert costs["answer_only"] / costs["filtered"] == config.answer_only_seq_len / config.seq_len
