"""The filter stage as a stream: dedup across the whole dataset, resume after a
kill at unit granularity, the same output whatever the worker count and unit size,
unverifiable samples, and the agreement of the input's own labels with our verdict."""
import json
import os
import random

import numpy as np
import pytest

from configs import filter_default
from distill_jax.filters import dedup, rejection, stage_files
from tests.filters.test_judge import ScriptedSampler, chat_format, tokenizer_path  # noqa: F401

WORDS = ("apples pears count add total basket market carry seven three four we then so "
         "again check result step next first numbers plus makes").split()


def _solution(seed: int, answer: int = 7) -> str:
    rng = random.Random(seed)
    body = " ".join(rng.choice(WORDS) for _ in range(300))
    return f"{body}\n</think>\nThe answer is \\boxed{{{answer}}}."


def _rec(pid, j, text, answer="7", labels=None, reference=True):
    r = {"prompt_id": pid, "sample_index": j, "text": text, "finish_reason": "stop",
         "problem": f"Problem {pid}: how many apples are in the basket at the end?",
         "reference": {"answer": answer} if reference else {}, "kind": "math",
         "source": "synthetic", "assistant_prefix": "<think>\n", "num_tokens": 130}
    if labels is not None:
        r["labels"] = labels
    return r


def _near(text: str, seed: int) -> str:
    """The same text with two words changed: Jaccard of 5-shingles ~0.9+."""
    words = text.split(" ")
    rng = random.Random(seed)
    for k in rng.sample(range(5, 100), 1):
        words[k] = "zebra"
    return " ".join(words)


def _write(d, shards):
    d.mkdir(exist_ok=True)
    for k, records in enumerate(shards):
        (d / f"shard-{k:05d}-of-{len(shards):05d}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in records))
    return d


def _config(traces, out, workers=1, unit_mb=64.0):
    c = filter_default.get_config()
    c.input.path = str(traces)
    c.input.unit_mb = unit_mb
    c.output_dir = str(out)
    c.num_workers = workers
    c.max_per_prompt = 3
    c.filters.order = ("truncated", "think_format", "length", "correctness")
    return c


@pytest.fixture()
def traces(tmp_path):
    base = _solution(0)
    shards = [
        [_rec("p0", 0, base), _rec("p0", 1, _solution(1)), _rec("p0", 2, _solution(2, 8))],
        # p1 repeats p0's first response exactly and nearly: caught across prompts.
        [_rec("p1", 0, base), _rec("p1", 1, _near(base, 0)), _rec("p1", 2, _solution(3))],
        [_rec(f"q{k}", j, _solution(100 + 10 * k + j)) for k in range(12) for j in range(3)],
    ]
    return _write(tmp_path / "traces", shards)


def _kept(out):
    return [(r["prompt_id"], r["sample_index"]) for r in
            map(json.loads, open(os.path.join(out, "curated.jsonl")))]


def test_duplicates_are_caught_across_prompts(traces, tmp_path):
    report = rejection.filter_traces(_config(traces, tmp_path / "out"))
    kept = _kept(tmp_path / "out")
    assert ("p0", 0) in kept and ("p1", 0) not in kept and ("p1", 1) not in kept
    assert ("p1", 2) in kept
    stages = {s["name"]: s for s in report["stages"]}
    assert stages["dedup"]["rejected"] == {"duplicate": 1, "near_duplicate": 1}
    audit = [json.loads(x) for x in open(tmp_path / "out/audit/dedup-near_duplicate.jsonl")]
    assert audit[0]["prompt_id"] == "p1" and "estimated Jaccard" in audit[0]["detail"]
    # Within one prompt only: p1's copy of p0's response is kept, and p1's near copy of
    # it is the near-duplicate.
    c = _config(traces, tmp_path / "per_prompt")
    c.dedup.scope = "prompt"
    report = rejection.filter_traces(c)
    kept = _kept(tmp_path / "per_prompt")
    assert ("p1", 0) in kept and ("p1", 1) not in kept
    assert {s["name"]: s for s in report["stages"]}["dedup"]["rejected"] == {
        "near_duplicate": 1}


def test_same_output_for_any_worker_count_and_unit_size(traces, tmp_path):
    rejection.filter_traces(_config(traces, tmp_path / "a"))
    rejection.filter_traces(_config(traces, tmp_path / "b", workers=2))   # 36 samples: a pool
    rejection.filter_traces(_config(traces, tmp_path / "c", unit_mb=0.01))
    ra, rb, rc = (json.load(open(tmp_path / d / "report.json")) for d in "abc")
    assert rc["input"]["units"] > ra["input"]["units"] == 3
    for other, report in (("b", rb), ("c", rc)):
        for name in ("curated.jsonl", "per_prompt.jsonl", "audit/dedup-duplicate.jsonl"):
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / other / name).read_bytes()
        for key in ("stages", "teacher", "acceptance", "dedup"):
            assert ra[key] == report[key]


class Killed(Exception):
    pass


@pytest.mark.parametrize("where", ["between_units", "mid_commit"])
def test_killed_run_resumes_to_identical_output(traces, tmp_path, monkeypatch, where):
    reference = tmp_path / "reference"
    rejection.filter_traces(_config(traces, reference, unit_mb=0.002))
    out = tmp_path / "out"
    real_commit = stage_files.WorkDir.commit_unit
    calls = []

    def dying_commit(self, i, *args):
        calls.append(i)
        if where == "between_units" and i == 3:
            raise Killed
        if where == "mid_commit" and i == 3:
            # The unit's files are written but its marker is not.
            monkeypatch.setattr(stage_files, "write_json_atomic", _raise_killed)
        return real_commit(self, i, *args)

    monkeypatch.setattr(stage_files.WorkDir, "commit_unit", dying_commit)
    with pytest.raises(Killed):
        rejection.filter_traces(_config(traces, out, unit_mb=0.002))
    monkeypatch.undo()
    work = [p for p in os.listdir(tmp_path) if p.startswith(".out.work-")]
    assert len(work) == 1 and not (out / "report.json").exists()
    committed = sorted(p for p in os.listdir(tmp_path / work[0] / "units") if p.endswith(
        ".json"))
    assert committed == [f"{i:05d}.json" for i in range(3)]

    report = rejection.filter_traces(_config(traces, out, unit_mb=0.002))
    for name in ("curated.jsonl", "per_prompt.jsonl", "audit/dedup-duplicate.jsonl",
                 "audit/dedup-near_duplicate.jsonl"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    ref_report = json.load(open(reference / "report.json"))
    for key in ("stages", "teacher", "acceptance", "dedup"):
        assert report[key] == ref_report[key]
    assert not [p for p in os.listdir(tmp_path) if ".work-" in p]


def _raise_killed(*args, **kwargs):
    raise Killed


def test_unverifiable_samples_and_label_agreement(tmp_path):
    shards = [[
        _rec("a", 0, _solution(1), labels={"correctness_math_verify": True}),
        _rec("a", 1, _solution(2, 9), labels={"correctness_math_verify": True}),   # we disagree
        _rec("a", 2, _solution(3, 9), labels={"correctness_math_verify": False}),
        _rec("b", 0, _solution(4), reference=False, labels={"correctness_math_verify": None}),
    ]]
    traces = _write(tmp_path / "traces", shards)
    report = rejection.filter_traces(_config(traces, tmp_path / "drop"))
    assert _kept(tmp_path / "drop") == [("a", 0)]
    assert report["unverifiable"] == {"samples": 1, "policy": "drop"}
    stages = {s["name"]: s for s in report["stages"]}
    assert stages["correctness"]["rejected"] == {"unverifiable": 1, "wrong_answer": 2}
    table = report["agreement"]["correctness_math_verify"]
    assert table["counts"] == {"false": {"incorrect": 1}, "none": {"unverifiable": 1},
                               "true": {"correct": 1, "incorrect": 1}}
    assert table["agreement"] == pytest.approx(2 / 3) and table["compared"] == 3

    c = _config(traces, tmp_path / "keep")
    c.filters.correctness.unverifiable = "keep"
    report = rejection.filter_traces(c)
    assert _kept(tmp_path / "keep") == [("a", 0), ("b", 0)]
    assert report["teacher"]["correct_samples"] == 1      # kept, but not counted correct


def test_minhash_estimates_jaccard_and_index_finds_candidates():
    h = dedup.MinHasher()
    rng = random.Random(0)
    base = [rng.choice(WORDS + [f"w{k}" for k in range(400)]) for _ in range(600)]
    for changes, lo, hi in ((3, 0.9, 1.0), (60, 0.2, 0.65)):
        other = list(base)
        for k in rng.sample(range(600), changes):
            other[k] = "zzz"
        a, b = h.shingles(" ".join(base)), h.shingles(" ".join(other))
        true = len(np.intersect1d(a, b)) / len(np.union1d(a, b))
        est = float(np.mean(h.signature(" ".join(base)) == h.signature(" ".join(other))))
        assert abs(est - true) < 0.12 and lo <= true <= hi
    index = dedup.SeenIndex(h, 0.9)
    texts = [" ".join(rng.choice(WORDS) for _ in range(300)) for _ in range(50)]
    for t in texts:
        assert index.check(h.keys(t)) is None
        index.add(h.keys(t))
    index.bands.merge()                      # found in the sorted arrays as in the recent dict
    assert index.check(h.keys("  ".join(texts[7].split()))) == ("duplicate", 1.0)
    near = texts[9].split()
    near[150] = "zebra"
    assert index.check(h.keys(" ".join(near)))[0] == "near_duplicate"
    with pytest.raises(ValueError, match="num_perm"):
        dedup.MinHasher(num_perm=100, bands=16)


def test_judge_recovers_what_the_rules_reject(tmp_path, monkeypatch, chat_format):
    """The stage asks the judge only about rule rejections that pass every other filter,
    keeps what it calls EQUIVALENT, and counts it; the verdicts come from its cache on
    a rerun."""
    from distill_jax.filters import judge as J
    replies = {"a dozen": "VERDICT: EQUIVALENT", "13": "VERDICT: DIFFERENT"}
    sampler = ScriptedSampler(chat_format.tokenizer, replies)

    def scripted_judge(section, cache_path):
        return J.LLMJudge(sampler, chat_format, "scripted",
                          J.judge_sampling_params(chat_format, 64), J.JudgeCache(cache_path))

    monkeypatch.setattr(J, "judge_from_config", scripted_judge)
    shards = [[_rec("dozen", 0, _solution(1, 12), answer="a dozen"),     # rules: wrong
               _rec("dozen", 1, _solution(2, 12) + " " + "x" * 3, answer="a dozen"),
               _rec("thirteen", 0, _solution(3, 12), answer="13"),        # rules and judge: wrong
               _rec("ok", 0, _solution(4))]]
    shards[0][1]["finish_reason"] = "length"      # truncated: never asked
    traces = _write(tmp_path / "traces", shards)
    c = _config(traces, tmp_path / "out")
    c.judge.enabled = True
    c.judge.model.preset = "tiny-qwen2"
    c.judge.tokenizer.path = "unused-by-the-scripted-judge"
    report = rejection.filter_traces(c)
    assert _kept(tmp_path / "out") == [("dozen", 0), ("ok", 0)]
    assert report["judge"] == {"enabled": True, "judged": 2, "cached": 0, "recovered": 1,
                               "verdicts": {"DIFFERENT": 1, "EQUIVALENT": 1}}
    assert sampler.prompts == 2
    kept = [json.loads(x) for x in open(tmp_path / "out" / "curated.jsonl")]
    assert kept[0]["judge"] == "EQUIVALENT"
    audit = [json.loads(x) for x in open(tmp_path / "out/audit/correctness-wrong_answer.jsonl")]
    assert audit[0]["judge"] == "DIFFERENT" and "(judge: DIFFERENT)" in audit[0]["detail"]
    c.force = True                     # the same output again: the judge cache beside it answers
    report = rejection.filter_traces(c)
    assert report["judge"]["cached"] == 2 and sampler.prompts == 2


def test_a_run_killed_while_assembling_keeps_the_top_k(traces, tmp_path, monkeypatch):
    """Killed after the units are committed, during the output's assembly: the
    resumed run still has every kept sample's top-k sidecar rows."""
    from distill_jax.data import topk_store
    for shard in sorted(traces.iterdir()):
        rows = [json.loads(line) for line in open(shard)]
        for r in rows:
            r["top_k_ids"], r["top_k_logprobs"] = [[1, 2]] * 3, [[-0.5, -1.5]] * 3
        shard.write_text("".join(json.dumps(r) + "\n" for r in rows))
    import distill_jax.data.curated_tfds as curated_tfds

    def dying_build(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(curated_tfds, "build_curated_dataset", dying_build)
    with pytest.raises(Killed):
        rejection.filter_traces(_config(traces, tmp_path / "out"))
    monkeypatch.undo()
    rejection.filter_traces(_config(traces, tmp_path / "out"))
    out = tmp_path / "out"
    reader = topk_store.TopKReader()
    kept = [json.loads(x) for x in open(out / "curated.jsonl")]
    assert kept and all(r["top_k"]["file"].startswith("topk/") for r in kept)
    for r in kept:
        ids, logprobs = topk_store.topk_arrays(r, str(out), reader)
        assert ids.tolist() == [[1, 2]] * 3 and logprobs.tolist() == [[-0.5, -1.5]] * 3
