"""Evaluation: estimators on hand-made cases, scoring on real references, the CLI."""
import json
import os
import subprocess
import sys

import pytest

from distill_jax.data.prompts import load_prompts
from distill_jax.evaluation.metrics import cons_at_k, majority_answer, pass_at_k
from distill_jax.evaluation.runner import ProblemResult, score_problem, summarize
from distill_jax.filters.math_answer import math_equal
from tests.tiny_models import arithmetic_tokenizer, tiny_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_majority_vote_and_its_tie_rule():
    eq = math_equal
    assert majority_answer(["4", "\\frac{8}{2}", "3"], eq) == "4"        # 4 == 8/2: two votes
    # A tie goes to the answer that appeared first.
    assert majority_answer(["3", "4", "4", "3"], eq) == "3"
    assert majority_answer(["4", "3", "3", "4"], eq) == "4"
    assert majority_answer([None, "5", None], eq) == "5"                 # None abstains
    assert majority_answer([None, None], eq) is None
    assert cons_at_k(["3", "4", "4"], "4", eq) and not cons_at_k(["3", "3", "4"], "4", eq)
    assert not cons_at_k([None, None], "4", eq)


def test_summary_pass_at_k_and_cons_on_hand_made_results():
    def result(c, n, cons):
        return ProblemResult("p", "math", n, c, [None] * n, [""] * n, [""] * n,
                             ["stop"] * n, cons)
    s = summarize([result(1, 4, True), result(0, 4, False), result(4, 4, True)], ks=(1, 2, 4))
    assert s["pass@1"] == pytest.approx((0.25 + 0 + 1) / 3)
    assert s["pass@k"]["2"] == pytest.approx((pass_at_k(4, 1, 2) + 0 + 1) / 3)
    assert s["pass@k"]["2"] == pytest.approx((0.5 + 0 + 1) / 3)         # 1 - C(3,2)/C(4,2)
    assert s["pass@k"]["4"] == pytest.approx(2 / 3)
    assert s["cons@4"] == pytest.approx(2 / 3)


def test_scoring_real_references(shared_data):
    prompts = load_prompts(str(shared_data / "gsm8k_test.jsonl"), "gsm8k", limit=20)
    with open(shared_data / "gsm8k_test.jsonl") as f:
        solutions = [json.loads(next(f))["answer"] for _ in range(20)]
    for k, (p, sol) in enumerate(zip(prompts, solutions)):
        right = score_problem(p, [f"work\n</think>\n{sol}", sol], ["stop", "stop"])
        assert right.correct == 2 and right.cons_correct
        other = solutions[(k + 1) % 20]
        wrong = score_problem(p, [f"w\n</think>\n{other}", "no answer", sol], ["stop"] * 3)
        assert wrong.correct == 1 and wrong.verdicts[:2] == ["wrong_answer", "no_answer"]
    code = load_prompts(str(shared_data / "humaneval.jsonl"), "humaneval", limit=2)
    with open(shared_data / "humaneval.jsonl") as f:
        rows = [json.loads(next(f)) for _ in range(2)]
    for p, r in zip(code, rows):
        text = f"plan\n</think>\n```python\n{r['prompt']}{r['canonical_solution']}```"
        res = score_problem(p, [text, "plan\n</think>\n```python\nx = 1\n```"], ["stop", "stop"])
        assert res.correct == 1 and res.cons_correct is None


@pytest.mark.slow
def test_distill_evaluate_cli_writes_results(shared_data, tmp_path):
    sp = arithmetic_tokenizer(tmp_path, problems=300)
    tiny_checkpoint(tmp_path / "ckpt", 400)
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "distill_jax.cli.evaluate",
           f"--config={REPO}/configs/evaluate_gsm8k.py",
           f"--config.model.checkpoint={tmp_path / 'ckpt'}", f"--config.tokenizer.path={sp}",
           f"--config.benchmarks.gsm8k.path={shared_data / 'gsm8k_test.jsonl'}",
           "--config.benchmarks.gsm8k.limit=3", "--config.benchmarks.gsm8k.k=2",
           "--config.sampling.max_new_tokens=8", f"--config.output_dir={out}",
           "--config.model.dtype=float32", "--config.model.param_dtype=float32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "gsm8k" / "summary.json").read_text())
    assert summary["problems"] == 3 and summary["samples_per_problem"] == 2
    assert summary["truncated_samples"] == 6             # 8 tokens never finish a solution
    assert summary["pass@1"] == 0.0 and "cons@2" in summary
    rows = [json.loads(line) for line in open(out / "gsm8k" / "per_problem.jsonl")]
    assert [r["prompt_id"] for r in rows] == ["gsm8k_test-0", "gsm8k_test-1", "gsm8k_test-2"]
    assert all(len(r["texts"]) == 2 for r in rows)
    assert "pass@1" in proc.stdout and "gsm8k" in (out / "summary.md").read_text()
