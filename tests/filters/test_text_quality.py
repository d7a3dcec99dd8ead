"""Quality filters, decontamination and pass@k, one behaviour per test."""
import json
import math
import os
import random
import unicodedata

import pytest

from distill_jax.evaluation.metrics import pass_at_k
from distill_jax.filters import decontaminate, text_quality, verify
from distill_jax.filters.sample import make_sample

PROMPT = "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\n"


def sample(text, problem="How many apples are there?", kind="math", finish="stop", **extra):
    record = {"prompt_id": "p", "sample_index": 0, "text": text, "finish_reason": finish,
              "problem": problem, "kind": kind, "prompt": PROMPT, "reference": {"answer": "7"}}
    record.update(extra)
    return make_sample(record, "test.jsonl:1")


def test_sample_puts_back_the_assistant_prefix():
    s = sample("reasoning\n</think>\n\\boxed{7}")
    assert s.response == "<think>\nreasoning\n</think>\n\\boxed{7}"
    assert s.reasoning == "\nreasoning\n" and s.answer == "\n\\boxed{7}"
    explicit = sample("x</think>y", assistant_prefix="")
    assert explicit.response == "x</think>y"
    with pytest.raises(KeyError, match="finish_reason"):
        make_sample({"prompt_id": "p", "sample_index": 0, "text": "t"}, "f:1")
    with pytest.raises(TypeError, match="sample_index"):
        make_sample({"prompt_id": "p", "sample_index": "0", "text": "t", "finish_reason": "stop"},
                    "f:1")


@pytest.mark.parametrize("text,kind,reason", [
    ("fine\n</think>\n\\boxed{7}", "math", ""),
    ("never closed \\boxed{7}", "math", "missing_think_close"),
    ("a</think>b<think>c</think>\\boxed{7}", "math", "multiple_think_blocks"),
    ("   \n</think>\n\\boxed{7}", "math", "empty_reasoning"),
    ("thinking\n</think>\n   ", "math", "empty_answer"),
    ("thinking\n</think>\nseven apples", "math", "no_final_answer"),
    ("thinking\n</think>\n```python\ndef f():\n    pass\n```", "code", ""),
    ("thinking\n</think>\ndef f(): pass", "code", "no_code_block"),
])
def test_think_format(text, kind, reason):
    v = text_quality.ThinkFormat()(sample(text, kind=kind))
    assert v.accepted == (reason == "") and v.reason == reason
    no_prefix = text_quality.ThinkFormat()(sample("x\n</think>\n\\boxed{7}", assistant_prefix=""))
    assert no_prefix.reason == "missing_think_open"


def test_truncated_and_length():
    assert text_quality.Truncated()(sample("a", finish="length")).reason == "truncated"
    assert text_quality.Truncated()(sample("a", finish="stop")).accepted
    f = text_quality.Length(min_tokens=3, max_tokens=5)
    assert f(sample("a", num_tokens=2)).reason == "too_short"
    assert f(sample("a", num_tokens=6)).reason == "too_long"
    assert f(sample("a", num_tokens=4)).accepted
    assert f(sample("one two three four")).accepted        # no token count: words


def test_language_mixing():
    f = text_quality.Language(max_foreign_fraction=0.02)
    english = "First we count the apples on the table, then we add the new ones."
    assert f(sample(english + "\n</think>\n\\boxed{7}")).accepted
    mixed = english + " 所以我们得到七个苹果。" + "\n</think>\n\\boxed{7}"
    v = f(sample(mixed))
    assert v.reason == "mixed_language" and "CJK in a LATIN prompt" in v.detail
    # Math notation and Greek letters are not a language switch.
    assert f(sample("Let $\\alpha = \\frac{x}{y}$ and θ = π/2, so the angle is right."
                    "\n</think>\n\\boxed{7}")).accepted
    chinese = sample("我们先数苹果，三个加四个等于七个。设 x 为苹果数。\n</think>\n\\boxed{7}",
                     problem="桌子上有多少个苹果？")
    assert f(chinese).accepted
    assert f(sample("We count three and four apples, which is seven in total.\n</think>\n"
                    "\\boxed{7}", problem="桌子上有多少个苹果？")).reason == "mixed_language"


# A long English trace: 200 sentences, 10,000 letters of prose.
LONG_ENGLISH = " ".join(f"Step {k}: we add the next term of the sequence to the running total."
                        for k in range(200))


def _english(middle=""):
    return sample(LONG_ENGLISH + " " + middle + " So the total is seven.\n</think>\n\\boxed{7}")


def test_language_rejects_a_sporadic_chinese_clause_and_quotes_it():
    clause = "The recurrence, which 可以通过递推公式来计算 the next term, is linear."
    s = _english(clause)
    counts = text_quality.script_counts(s.response)
    assert counts["CJK"] / sum(counts.values()) < 0.002              # ~0.1% of the letters
    assert text_quality.Language(min_foreign_run=0)(s).accepted        # the fraction alone misses it
    v = text_quality.Language()(s)
    assert not v.accepted and v.reason == "foreign_run"
    assert v.detail == 'a 11-character CJK run in a LATIN prompt: "可以通过递推公式来计算"'
    # A long run is quoted up to ~60 characters; spaces and punctuation stay inside a run.
    long_clause = "然后我们" + "，继续计算下一项" * 12 + " and stop."
    v = text_quality.Language()(_english(long_clause))
    assert v.reason == "foreign_run" and v.detail.endswith('…"')
    assert '"然后我们，继续计算下一项，继续计算下一项' in v.detail
    assert len(v.detail.split('"')[1]) == 60


def test_language_rejects_one_short_chinese_word_in_a_long_english_trace():
    s = _english("Therefore 所以 the sum doubles, as in step 3.")
    counts = text_quality.script_counts(s.response)
    assert counts["CJK"] / sum(counts.values()) < 0.001
    v = text_quality.Language()(s)
    assert v.reason == "foreign_run" and "2-character CJK run" in v.detail and '"所以"' in v.detail
    # Digits and math inside a clause do not split it: 第 3 步 is one run.
    v = text_quality.Language()(_english("We check 第 $n$ 步 again."))
    assert v.reason == "foreign_run" and '"第 $n$ 步"' in v.detail


def test_language_chinese_prompt_answered_in_chinese_passes():
    f = text_quality.Language()
    steps = "".join(f"第 {k} 步：把第 {k} 个篮子里的苹果数加到总数上，再检查一遍总数是否正确。"
                    for k in range(1, 21))
    reasoning = (steps + "设 x 为苹果数，则 x = 3 + 4。由 sin²x + cos²x = 1 可知结论成立，"
                 "用 AM-GM 不等式检验，$\\alpha \\le \\pi$，θ ≤ 2。这和 Fibonacci 数列无关。"
                 "\n</think>\n所以答案是 \\boxed{7}。")
    assert f(sample(reasoning, problem="桌子上有多少个苹果？")).accepted
    # A Chinese prompt that names code is still a Chinese prompt (its script is
    # counted in words and characters, not letters), and inline code is not prose.
    code_prompt = "用 Python 实现函数 two_sum(nums, target)，返回和为 target 的两个下标。"
    ok = "我们用 `two_sum` 遍历 `nums`，先排序再用双指针，复杂度是 $O(n \\log n)$。\n</think>\n完成。"
    assert f(sample(ok, problem=code_prompt)).accepted
    # ... but an English clause in Chinese reasoning is a run of LATIN.
    mixed = steps * 2 + "Wait, let me check 边界情况。\n</think>\n完成。"
    v = f(sample(mixed, problem=code_prompt))
    assert v.reason == "foreign_run" and v.detail == \
        'a 3-word LATIN run in a CJK prompt: "Wait, let me check"'


@pytest.mark.parametrize("middle", [
    "With α = π/3 and β = 2θ the angles add up, and Δ ≈ Σ aᵢ ≤ 10.",        # Greek, math
    "Let 𝑥 ∈ ℝ, ℓ ≥ 0, ∀ n ∈ ℕ ∃ m ≥ n, the 2ⁿ case and ℵ₀ too.",          # math unicode
    "The total is seven。Then we stop，and check again：fine！",             # CJK punctuation
    "We meet at the café, as Erdős would, and it is a naïve guess.",       # accented Latin
    "Great, that works 🎉🙂 👍 ✅.",                                         # emoji
    "The character 中 has four strokes.",                                 # one CJK character
    "Peter the Great (Пётр) founded the city in 1703.",                   # one Cyrillic name
])
def test_language_notation_and_stray_letters_do_not_trigger(middle):
    v = text_quality.Language()(_english(middle))
    assert v.accepted, v.detail


def test_language_cyrillic_runs():
    f = text_quality.Language()
    v = f(_english("Peter, то есть Пётр Великий, founded the city in 1703."))
    assert v.reason == "foreign_run"
    assert v.detail == 'a 3-word CYRILLIC run in a LATIN prompt: "то есть Пётр Великий"'
    # Quoting the problem is not switching language: names from the prompt are free.
    history = "Who was Пётр Великий and in which year did he found Санкт-Петербург?"
    quoted = sample(LONG_ENGLISH + " Пётр Великий founded Санкт-Петербург in 1703."
                    "\n</think>\n\\boxed{1703}", problem=history)
    assert f(quoted).accepted
    # A one-letter or two-letter word does not make a run on its own.
    assert f(_english("Then и so on, to the end.")).accepted


def test_language_pure_math_prompt_expects_the_responses_own_script():
    f = text_quality.Language()
    v = f(sample(LONG_ENGLISH + " 所以答案是七。\n</think>\n\\boxed{7}", problem="$3 + 4 = ?$"))
    assert v.reason == "foreign_run" and "CJK run in a LATIN response" in v.detail
    assert f(sample("三加四等于七。\n</think>\n\\boxed{7}", problem="$3 + 4 = ?$")).accepted


def test_language_thresholds_come_from_the_config():
    from distill_jax.filters import config, rejection
    params = dict(config.default_config().filters.language)
    assert params == {"max_foreign_fraction": 0.02, "min_foreign_run": 2,
                      "min_foreign_word_letters": 3}
    short = _english("Therefore 所以 the sum doubles.")
    assert not rejection.FILTER_CLASSES["language"](**params)(short).accepted
    params["min_foreign_run"] = 3
    assert rejection.FILTER_CLASSES["language"](**params)(short).accepted
    assert not rejection.FILTER_CLASSES["language"](**params)(_english("然后所以 we stop.")).accepted
    # Words are counted once they have min_foreign_word_letters letters; 0 turns runs off.
    cyr = _english("Then то есть it works.")                    # "то" 2 letters, "есть" 4
    assert text_quality.Language()(cyr).accepted
    assert text_quality.Language(min_foreign_word_letters=2)(cyr).reason == "foreign_run"
    assert text_quality.Language(min_foreign_run=0)(_english("然后所以我们 stop.")).accepted


def test_repetition():
    f = text_quality.Repetition()
    normal = " ".join(f"Step {k}: add {k} apples to the basket of size {k * 3}." for k in range(30))
    assert f(sample(normal + "\n</think>\n\\boxed{7}")).accepted
    loop_tail = "We count. " + "Wait, let me recount. " * 6
    assert f(sample(loop_tail)).reason == "looping_tail"
    repeated = ("I will check the sum of the apples once more to be sure. " * 8
                + "\n</think>\n\\boxed{7}")
    assert f(sample(repeated)).reason == "repeated_ngrams"


def test_readability():
    f = text_quality.Readability(max_paragraph_chars=100)
    assert f(sample("short.\n\nalso short.\n</think>\n\\boxed{7}")).accepted
    assert f(sample("x" * 150 + "\n</think>\n\\boxed{7}")).reason == "overlong_paragraph"
    code = "Let me compute:\n```python\nprint(3+4)\n```\n</think>\n\\boxed{7}"
    assert f(sample(code)).reason == "code_in_reasoning"
    assert f(sample(code, kind="code")).accepted


def test_decontamination_index(tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps({"q": "Natalia sold clips to 48 of her friends in April and then "
                                     "she sold half as many clips in May."}) + "\n"
                    + json.dumps({"q": "Compute 7 times 8."}) + "\n")
    index = decontaminate.load_eval_index([f"{path}:q"], data_dir="", n=8)
    f = decontaminate.Decontaminate(index)
    hit = f(sample("x", problem="NATALIA sold clips to 48 of her friends in April, how many?"))
    assert hit.reason == "contaminated_eval" and "natalia sold clips to 48 of her friends" in hit.detail
    assert f(sample("x", problem="Natalia sold clips to 47 of her friends in April.")).accepted
    # Shorter than n words: the whole text is one gram.
    assert not f(sample("x", problem="Please compute 7 times 8. Show work.")).accepted
    assert f(sample("x", problem="Please compute 7 times 9.")).accepted
    with pytest.raises(ValueError, match="unknown evaluation set"):
        decontaminate.load_eval_index(["nope"], data_dir="")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": "fine"}\n{oops\n')
    with pytest.raises(ValueError, match=f"{bad}:2"):
        decontaminate.load_eval_index([f"{bad}:q"], data_dir="")


def test_builtin_eval_sets_catch_their_own_problems(shared_data):
    index = decontaminate.load_eval_index(list(decontaminate.BUILTIN_EVAL_SETS), str(shared_data))
    f = decontaminate.Decontaminate(index)
    for name, (filename, field) in decontaminate.BUILTIN_EVAL_SETS.items():
        with open(os.path.join(shared_data, filename)) as fh:
            rows = [json.loads(line) for line in fh]
        caught = sum(not f(sample("x", problem=r[field])).accepted for r in rows)
        assert caught == len(rows), name
    # GSM8K train problems are not test problems, but share stock phrases with them.
    with open(os.path.join(shared_data, "gsm8k_train.jsonl")) as fh:
        train = [json.loads(line)["question"] for line in fh]
    strict = sum(not f(sample("x", problem=q)).accepted for q in train)
    assert strict == 94                     # the number the module docstring states
    lenient = decontaminate.Decontaminate(index, min_overlap_fraction=0.25)
    flagged = [q for q in train if not lenient(sample("x", problem=q)).accepted]
    assert len(flagged) == 3


def test_correctness_gold_unparseable_is_a_rejection_not_a_crash():
    c = verify.Correctness()
    for gold in ("", None, "\\frac{1}{2"):
        s = sample("r\n</think>\n\\boxed{7}", reference={"answer": gold})
        v = c(s)
        assert not v.accepted and v.reason == "gold_unparseable"
    assert c(sample("r\n</think>\n\\boxed{7}")).accepted
    assert c(sample("r\n</think>\n\\boxed{8}")).reason == "wrong_answer"
    assert c(sample("r\n</think>\nno idea")).reason == "no_answer"


def test_correctness_runs_code_against_tests():
    c = verify.Correctness()
    ref = {"test": "def check(candidate):\n    assert candidate(2) == 4\n", "entry_point": "double"}
    problem = "def double(x):\n    \"\"\"Twice x.\"\"\"\n"
    full = sample("t\n</think>\n```python\ndef double(x):\n    return 2 * x\n```", kind="code",
                  problem=problem, reference=ref)
    body_only = sample("t\n</think>\n```python\n    return x + x\n```", kind="code",
                       problem=problem, reference=ref)
    wrong = sample("t\n</think>\n```python\ndef double(x):\n    return x\n```", kind="code",
                   problem=problem, reference=ref)
    assert c(full).accepted and c(body_only).accepted
    assert c(wrong).reason == "code_failed"


def test_pass_at_k_matches_the_closed_form():
    for n, c, k in [(10, 3, 1), (10, 3, 5), (5, 0, 2), (5, 5, 3), (8, 7, 2), (20, 1, 20)]:
        expected = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def _words_per_character(text):
    """The specification of text_quality._words: one character at a time (the module
    skips ahead with regexes; the words must be the same)."""
    tq = text_quality
    t = tq._MATH_OR_CODE.sub(lambda m: " " * len(m.group()), text)
    out, i, n = [], 0, len(t)
    while i < n:
        sc = tq._script(t[i]) if t[i].isalpha() else "COMMON"
        if sc in tq._NEUTRAL_SCRIPTS:
            i += 1
            continue
        j = i + 1
        while j < n:
            c = t[j]
            if c.isalpha() and tq._script(c) == sc or unicodedata.category(c).startswith("M"):
                j += 1
            elif (c in "-'’" and sc not in tq._UNSPACED_SCRIPTS and j + 1 < n
                  and t[j + 1].isalpha() and tq._script(t[j + 1]) == sc):
                j += 1
            else:
                break
        word = t[i:j]
        letters = sum(ch.isalpha() for ch in word)
        neutral = False
        if sc not in tq._UNSPACED_SCRIPTS:
            before, after = t[i - 1] if i else " ", t[j] if j < n else " "
            glued = (before.isdigit() or before == "_"
                     or before == "." and i > 1 and (t[i - 2].isalnum() or t[i - 2] == "_")
                     or after.isdigit() or after in "_([" or after == "." and j + 1 < n
                     and (t[j + 1].isalnum() or t[j + 1] == "_"))
            cased = [ch for ch in word if ch.isalpha() and ch.lower() != ch.upper()]
            acronym = len(cased) >= 2 and all(ch.isupper() for ch in cased)
            camel = any(a.islower() and b.isupper() for a, b in zip(word, word[1:]))
            neutral = (letters < 2 or glued or acronym or camel
                       or word.casefold() in tq._MATH_WORDS)
        out.append(tq._Word(i, j, word, sc, letters, neutral))
        i = j
    return out


def test_word_scan_equals_the_per_character_specification():
    pieces = list("abcXYZ-'’ _.([0123 \n") + list("éüÀ") + ["\u0301", "\u0308"] + \
        list("可以计算") + list("Пётрабв") + list("αβπ𝑥ℝ²½") + [
            "$x$", "`c`", "\\frac", "<think>", "sin", "AM-GM", "maxSum", "x1", "dp_i",
            "nums.sort", "len(", "don't", "Cauchy-Schwarz", "café"]
    rng = random.Random(0)
    for _ in range(3000):
        t = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        assert text_quality._words(t) == _words_per_character(t), repr(t)
