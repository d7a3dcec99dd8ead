"""The LLM judge: its prompt, verdict parsing, the on-disk cache, a scripted judge
(what the filter sees), one tiny random judge model through the real Sampler, and
the config refusals."""
import json
import os
import subprocess
import sys

import pytest

from distill_jax.filters import judge as J
from distill_jax.filters.sample import make_sample
from distill_jax.sampling.outputs import SampleOutput
from tests.tiny_models import arithmetic_tokenizer, tiny_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return arithmetic_tokenizer(tmp_path_factory.mktemp("judge_tok"))


@pytest.fixture(scope="module")
def chat_format(tokenizer_path):
    from distill_jax.chat import ChatFormat
    from distill_jax.tokenizer import load_tokenizer
    return ChatFormat.create(load_tokenizer(tokenizer_path), assistant_prefix="")


# ---------------------------------------------------------------- prompt


def test_prompt_holds_problem_gold_and_answer():
    text = J.render_judge_message("What is {x} if 2x = 1?", "\\frac{1}{2}", " 0.5 ")
    assert "What is {x} if 2x = 1?" in text and "\\frac{1}{2}" in text
    assert f"## {J.FINAL_ANSWER_HEADING}\n0.5\n" in text
    assert text.rstrip().endswith("VERDICT: AMBIGUOUS")
    assert "\\frac{1}{2}; x = 3" in text       # the template's own braces survive format


def test_response_tail_is_capped():
    response = "START " + "a" * 5000 + " the answer is 7 END"
    text = J.render_judge_message("p", "7", response, from_response=True)
    assert J.RESPONSE_TAIL_HEADING in text and J.FINAL_ANSWER_HEADING not in text
    assert "START" not in text and "the answer is 7 END" in text
    item = J.JudgeItem("p", "7", response, from_response=True)
    assert item.answer.startswith("...") and len(item.answer) == J.RESPONSE_TAIL_CHARS + 3
    short = J.JudgeItem("p", "7", "  short  ", from_response=True)
    assert short.answer == "short"


def test_item_for_sample():
    def sample(text, kind="math", answer="12"):
        return make_sample({"prompt_id": "p", "sample_index": 0, "text": text,
                            "finish_reason": "stop", "kind": kind, "problem": "Q?",
                            "reference": {"answer": answer}, "assistant_prefix": "<think>\n"},
                           "f:1")
    item = J.item_for_sample(sample("r</think>so twelve"), "twelve")
    assert item == J.JudgeItem("Q?", "12", "twelve", False)
    tail = J.item_for_sample(sample("reasoning</think> it is twelve"), None)
    assert tail.from_response and tail.answer == "it is twelve"
    unclosed = J.item_for_sample(sample("no close, twelve"), None)
    assert unclosed.from_response and unclosed.answer == "<think>\nno close, twelve"
    assert J.item_for_sample(sample("x", kind="code"), None) is None
    assert J.item_for_sample(sample("x", answer=None), "1") is None
    assert J.item_for_sample(sample("x", answer="  "), "1") is None


# ---------------------------------------------------------------- verdicts


@pytest.mark.parametrize("text,verdict", [
    ("The two agree.\nVERDICT: EQUIVALENT", "EQUIVALENT"),
    ("VERDICT: DIFFERENT", "DIFFERENT"),
    ("verdict: ambiguous", "AMBIGUOUS"),
    ("verdict: equivalent\n", "EQUIVALENT"),
    ("**VERDICT:** Equivalent.", "EQUIVALENT"),
    ("**VERDICT: DIFFERENT**", "DIFFERENT"),
    ("Verdict: **EQUIVALENT**!", "EQUIVALENT"),
    ("VERDICT:\n\nEQUIVALENT", "EQUIVALENT"),
    ("VERDICT: NOT EQUIVALENT", "DIFFERENT"),
    ("<think>\n0.5 = 1/2, so EQUIVALENT.\n</think>\nVERDICT: EQUIVALENT", "EQUIVALENT"),
    # A verdict word (even a verdict line) inside the reasoning does not count.
    ("<think>VERDICT: EQUIVALENT? no, 3 != 4</think>\nVERDICT: DIFFERENT", "DIFFERENT"),
    ("<think>clearly EQUIVALENT</think>\nThe answers differ.", "AMBIGUOUS"),
    ("<think>still thinking, EQUIVALENT so far", "AMBIGUOUS"),
    ("first VERDICT: DIFFERENT\nafter a second look\nVERDICT: EQUIVALENT", "EQUIVALENT"),
    # No verdict line: one unhedged verdict word in the last line.
    ("They match.\n**Equivalent**", "EQUIVALENT"),
    ("The values differ, so they are DIFFERENT.", "DIFFERENT"),
    ("They are not equivalent.", "AMBIGUOUS"),
    ("I cannot tell whether they are equivalent", "AMBIGUOUS"),
    ("EQUIVALENT or DIFFERENT", "AMBIGUOUS"),
    ("EQUIVALENT\nhmm, actually DIFFERENT", "AMBIGUOUS"),
    ("VERDICT: EQUIVALENT|DIFFERENT|AMBIGUOUS", "AMBIGUOUS"),   # the format, echoed
    ("I cannot help with that request.", "AMBIGUOUS"),
    ("I'm sorry, but I can't assist with that.", "AMBIGUOUS"),
    ("3 + 4 = 7 7 7 ( ( ) 12", "AMBIGUOUS"),
    ("", "AMBIGUOUS"),
    ("\n  \n", "AMBIGUOUS"),
])
def test_parse_verdict(text, verdict):
    assert J.parse_verdict(text) == verdict


# ---------------------------------------------------------------- cache


def test_cache_key_is_on_gold_and_answer_not_problem():
    a = J.JudgeItem("problem one", "1/2", "0.5")
    assert J.cache_key("j", a) == J.cache_key("j", J.JudgeItem("problem two", " 1/2", "0.5 "))
    assert J.cache_key("j", a) != J.cache_key("other-judge", a)
    assert J.cache_key("j", a) != J.cache_key("j", J.JudgeItem("p", "1/2", "0.5", True))
    assert J.cache_key("j", a) != J.cache_key("j", J.JudgeItem("p", "1/2", "0.50"))


def test_cache_survives_reopening_and_drops_a_torn_last_line(tmp_path):
    path = str(tmp_path / "sub" / "cache.jsonl")
    with J.JudgeCache(path) as cache:
        assert len(cache) == 0 and cache.get("k1") is None
        cache.put("k1", "EQUIVALENT", "VERDICT: EQUIVALENT", gold="1")
        cache.put("k2", "DIFFERENT", "raw")
        cache.put("k1", "DIFFERENT", "ignored: k1 is already judged")
        assert cache.get("k1") == "EQUIVALENT" and "k2" in cache
    rows = [json.loads(line) for line in open(path)]
    assert [(r["key"], r["verdict"]) for r in rows] == [("k1", "EQUIVALENT"), ("k2", "DIFFERENT")]
    assert rows[0]["gold"] == "1" and rows[0]["raw_text"] == "VERDICT: EQUIVALENT"

    with open(path, "a") as f:                   # a run killed mid-write
        f.write('{"key": "k3", "verdict": "EQUI')
    cache = J.JudgeCache(path)
    assert cache.torn_lines == 1 and len(cache) == 2 and cache.get("k3") is None
    cache.put("k3", "AMBIGUOUS", "")            # appended after the last whole line
    cache.close()
    again = J.JudgeCache(path)
    assert again.torn_lines == 0 and again.verdicts == {
        "k1": "EQUIVALENT", "k2": "DIFFERENT", "k3": "AMBIGUOUS"}

    with pytest.raises(ValueError, match="verdict"):
        again.put("k4", "MAYBE", "")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": "a", "verdict": "DIFFERENT"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        J.JudgeCache(str(bad))


# ---------------------------------------------------------------- a scripted judge


class ScriptedSampler:
    """Stands in for a Sampler: replies by what the prompt's reference answer is, and
    counts its calls and prompts."""

    length_buckets = (32, 64, 128, 256, 512, 1024, 2048)
    slot_len = 0

    def __init__(self, tokenizer, replies):
        self.tokenizer, self.replies = tokenizer, replies
        self.calls, self.prompts = 0, 0

    def generate_stream(self, prompts, params, prompt_keys=None):
        assert params.n == 1 and params.temperature == 0 and params.stop_token_ids
        self.calls += 1
        self.prompts += len(prompts)
        for i, prompt in reversed(list(enumerate(prompts))):     # out of order, as slots finish
            text = self.tokenizer.decode(prompt)
            gold = text.split("## Reference answer\n")[1].split("\n")[0]
            ids = self.tokenizer.encode(self.replies[gold]) + [params.stop_token_ids[0]]
            yield i, [SampleOutput(ids, [0.0] * len(ids), "stop")]


def test_scripted_judge_dedups_caches_and_keeps_order(chat_format, tmp_path):
    replies = {"1/2": "<think>same</think>\nVERDICT: EQUIVALENT",
               "3": "VERDICT: DIFFERENT", "4": "I cannot help with that."}
    sampler = ScriptedSampler(chat_format.tokenizer, replies)
    params = J.judge_sampling_params(chat_format, max_new_tokens=64)
    path = str(tmp_path / "cache.jsonl")
    judge = J.LLMJudge(sampler, chat_format, "scripted", params, J.JudgeCache(path))
    items = [J.JudgeItem("p1", "1/2", "0.5"), J.JudgeItem("p2", "3", "4"),
             J.JudgeItem("p3", "1/2", "0.5"),          # the same pair, another problem
             J.JudgeItem("p4", "4", "four")]
    results = judge.judge(items)
    assert [r.verdict for r in results] == ["EQUIVALENT", "DIFFERENT", "EQUIVALENT", "AMBIGUOUS"]
    assert [r.cached for r in results] == [False, False, True, False]
    assert results[0].equivalent and results[0].raw_text == replies["1/2"]
    assert sampler.calls == 1 and sampler.prompts == 3
    assert judge.stats["generated"] == 3 and judge.stats["repeats"] == 1

    results = judge.judge(items + [J.JudgeItem("p5", "3", "3")])
    assert sampler.calls == 2 and sampler.prompts == 4       # only the new pair
    assert [r.cached for r in results] == [True] * 4 + [False]
    assert judge.stats["cache_hits"] == 4
    judge.close()

    reopened = J.LLMJudge(sampler, chat_format, "scripted", params, J.JudgeCache(path))
    assert [r.verdict for r in reopened.judge(items)] == [
        "EQUIVALENT", "DIFFERENT", "EQUIVALENT", "AMBIGUOUS"]
    assert sampler.calls == 2                               # all from disk
    other = J.LLMJudge(sampler, chat_format, "another-judge", params, J.JudgeCache(path))
    other.judge(items[:1])
    assert sampler.calls == 3                               # the judge is in the key
    assert J.LLMJudge(sampler, chat_format, "x", params).judge([]) == []
    assert sampler.calls == 3


def test_too_long_prompt_is_not_judged(chat_format, tmp_path):
    sampler = ScriptedSampler(chat_format.tokenizer, {"1": "VERDICT: EQUIVALENT"})
    cache = J.JudgeCache(str(tmp_path / "c.jsonl"))
    judge = J.LLMJudge(sampler, chat_format, "j", J.judge_sampling_params(chat_format),
                       cache, max_prompt_tokens=1500)
    long_item = J.JudgeItem("x" * 3000, "1", "1")
    results = judge.judge([long_item, J.JudgeItem("p", "1", "1.0")])
    assert results[0].verdict == "AMBIGUOUS" and "not judged" in results[0].raw_text
    assert not results[0].cached and results[1].verdict == "EQUIVALENT"
    assert judge.stats["too_long"] == 1 and sampler.prompts == 1 and len(cache) == 1
    with pytest.raises(ValueError, match="n=2"):
        import dataclasses
        J.LLMJudge(sampler, chat_format, "j",
                   dataclasses.replace(J.judge_sampling_params(chat_format), n=2))


# ---------------------------------------------------------------- a real tiny judge


@pytest.fixture(scope="module")
def tiny_judge(tokenizer_path, tmp_path_factory):
    """A tiny random judge built from a config, once per module (compiles once)."""
    from distill_jax.tokenizer import load_tokenizer
    root = tmp_path_factory.mktemp("judge_model")
    tiny_checkpoint(root / "judge", load_tokenizer(tokenizer_path).vocab_size,
                    max_position_embeddings=4096)
    section = J.judge_config()
    section.enabled = True
    section.model.checkpoint = str(root / "judge")
    section.model.dtype = section.model.param_dtype = "float32"
    section.tokenizer.path = tokenizer_path
    section.max_new_tokens = 8
    section.num_slots = 4
    section.mesh = None
    return J.judge_from_config(section, str(root / "cache.jsonl"))


class CountingSampler:
    def __init__(self, sampler):
        self.sampler, self.calls = sampler, 0

    def __getattr__(self, name):
        return getattr(self.sampler, name)

    def generate_stream(self, *args, **kwargs):
        self.calls += 1
        return self.sampler.generate_stream(*args, **kwargs)


def test_tiny_random_judge_runs_through_the_sampler(tiny_judge, tmp_path):
    assert tiny_judge.judge_id == "judge" and tiny_judge.params.temperature == 0
    assert tiny_judge.params.n == 1 and tiny_judge.params.max_new_tokens == 8
    assert tiny_judge.params.stop_token_ids == tiny_judge.chat_format.stop_token_ids()
    assert tiny_judge.sampler.num_slots == 4
    assert tiny_judge.max_prompt_tokens == 2048           # judge.max_prompt_tokens
    items = [J.JudgeItem("What is 2 + 3?", "5", "5.0"),
             J.JudgeItem("What is 7 * 6?", "42", "so 6 * 7 = " + "42 " * 100,
                         from_response=True),
             J.JudgeItem("Again: 2 + 3?", "5", "5.0"),
             # ~2000 tokens of tail: over the prompt limit, so not judged.
             J.JudgeItem("What is 7 * 6?", "42", "it is " + "6 " * 2000, from_response=True)]
    first = tiny_judge.judge(items)
    assert all(r.verdict in J.VERDICTS for r in first)
    assert [r.cached for r in first] == [False, False, True, False]
    assert first[0].verdict == first[2].verdict and first[0].raw_text
    assert all(r.verdict == J.parse_verdict(r.raw_text) for r in first[:3])
    assert "not judged" in first[3].raw_text and first[3].verdict == "AMBIGUOUS"
    assert tiny_judge.stats["generated"] == 2 and tiny_judge.stats["too_long"] == 1
    assert len(tiny_judge.cache) == 2

    # Deterministic: another judge on the same sampler, without a cache.
    counting = CountingSampler(tiny_judge.sampler)
    fresh = J.LLMJudge(counting, tiny_judge.chat_format, tiny_judge.judge_id,
                       tiny_judge.params, None)
    assert fresh.max_prompt_tokens == tiny_judge.max_prompt_tokens
    again = fresh.judge(items)
    assert [(r.verdict, r.raw_text) for r in again] == [(r.verdict, r.raw_text) for r in first]
    assert counting.calls == 1

    # The cache, reopened from disk: no generation at all.
    cached = J.LLMJudge(counting, tiny_judge.chat_format, tiny_judge.judge_id,
                        tiny_judge.params, J.JudgeCache(tiny_judge.cache.path))
    assert [r.verdict for r in cached.judge(items)] == [r.verdict for r in first]
    assert counting.calls == 1 and cached.stats["cache_hits"] == 3
    assert cached.stats["too_long"] == 1


# ---------------------------------------------------------------- config


def test_config_defaults_and_cache_path():
    c = J.judge_config()
    assert c.enabled is False and tuple(c.reasons) == J.JUDGE_REASONS
    assert c.max_new_tokens == 1024 and c.num_slots == 0 and c.cache_path == ""
    assert {"checkpoint", "preset", "dtype", "attention_impl"} <= set(c.model.keys())
    assert J.default_cache_path("/x/curated/gsm8k/") == "/x/curated/gsm8k.judge_cache.jsonl"
    c.model.preset, c.model.init_seed = "tiny-qwen2", 3
    assert J.judge_id_of(c) == "tiny-qwen2-random-init3"
    c.id = "my-judge"
    assert J.judge_id_of(c.to_dict()) == "my-judge"


@pytest.mark.parametrize("change,message", [
    ({}, "judge.model needs `checkpoint`"),
    ({"reasons": ("wrong_answer", "no_code")}, "no_code"),
    ({"model.preset": "tiny-qwen2"}, "judge.tokenizer.path is empty"),
    ({"model.preset": "tiny-qwen2", "tokenizer.path": "t", "max_new_tokens": 0},
     "max_new_tokens=0"),
])
def test_bad_config_is_refused_before_loading(change, message, monkeypatch):
    from distill_jax import models
    from tests.overrides import apply_overrides

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(models, "model_from_section", no_loading)
    c = apply_overrides(J.judge_config(), change)
    with pytest.raises(ValueError, match=message.replace("`", ".")):
        J.judge_from_config(c, None)
    with pytest.raises(ValueError, match=message.replace("`", ".")):
        J.check_judge_config(c.to_dict())


def test_importing_the_judge_does_not_import_jax():
    code = ("import sys\nimport distill_jax.filters.judge as j\n"
            "j.parse_verdict('VERDICT: EQUIVALENT')\n"
            "assert 'jax' not in sys.modules, 'jax was imported'\n"
            "assert 'distill_jax.sampling' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
