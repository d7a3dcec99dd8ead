"""stdin/stdout code problems through the pipeline's own entry points: prompts loaded
from JSONL carry their I/O cases (refused when malformed, naming the line), the
correctness filter judges a response on them, and evaluation reports pass@k."""
import json

import pytest

from distill_jax.data.prompts import load_prompts
from distill_jax.evaluation.runner import score_problem, summarize
from distill_jax.filters.code_exec import SandboxLimits
from distill_jax.filters.verify import Correctness

SUM = {"id": "sum", "problem": "Print the sum of the integers on the line.",
       "io_tests": [{"input": "1 2 3\n", "output": "6\n"}, {"input": "-5 5\n", "output": "0\n"},
                    {"input": "100\n", "output": "100\n"}]}
# LiveCodeBench's layout: JSON text, one "stdin" case and one "functional" one (ignored).
MAX = {"id": "max", "problem": "Print the largest integer on the line.",
       "public_test_cases": json.dumps([
           {"input": "3 9 2\n", "output": "9\n", "testtype": "stdin"},
           {"input": "[1]", "output": "1", "testtype": "functional"}])}
RIGHT_SUM = "```python\nprint(sum(map(int, input().split())))\n```"
WRONG_SUM = "```python\nprint(max(map(int, input().split())))\n```"   # right on one case only
RIGHT_MAX = "```python\nprint(max(map(int, input().split())))\n```"


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_io_problems_load_verify_and_score(tmp_path):
    prompts = load_prompts(_write(tmp_path / "cp.jsonl", [SUM, MAX]), "jsonl", kind="code")
    assert [p.kind for p in prompts] == ["code", "code"]
    assert prompts[0].reference["io_tests"] == SUM["io_tests"]
    verifier = Correctness(code_limits=SandboxLimits(wall_time_s=10, cpu_time_s=2),
                           io_stop_on_first_failure=False)
    texts = [f"plan\n</think>\n{RIGHT_SUM}", f"plan\n</think>\n{WRONG_SUM}", "no code at all"]
    sums = score_problem(prompts[0], texts, ["stop"] * 3, verifier=verifier)
    assert sums.correct == 1
    assert sums.verdicts[1] == "code_failed" and sums.verdicts[2] == "no_code"
    maxes = score_problem(prompts[1], [f"x\n</think>\n{RIGHT_MAX}"] * 3, ["stop"] * 3,
                          verifier=verifier)
    assert maxes.correct == 3
    summary = summarize([sums, maxes], ks=(1,))
    assert summary["pass@1"] == pytest.approx((1 / 3 + 1) / 2)


def test_a_malformed_io_case_is_refused_when_loading(tmp_path):
    bad = dict(SUM, io_tests=[{"input": "1\n", "output": "1\n"}, {"input": "2\n"}])
    path = _write(tmp_path / "bad.jsonl", [MAX, bad])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2.*io_tests.*\[1\].*output"):
        load_prompts(path, "jsonl", kind="code")
