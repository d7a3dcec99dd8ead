"""distill-evaluate with its checkpoint, tokenizer, benchmark file and outputs on a
bucket (the fake object store `fakebucket://`): the same outputs as a local run, no
renames, and a resume from the bucket's partial results."""
import json
import os
import shutil

import pytest

from distill_jax import storage
from distill_jax.evaluation.runner import ProblemResult, _finished, _record_finished, evaluate
from distill_jax.fake_bucket import FakeBucket
from tests.evaluation import test_evaluate_r1
from tests.evaluation.test_evaluate_r1 import _config

student = test_evaluate_r1.student        # its fixture, for this module

BUCKET = "fakebucket://bucket/evaluation"
OUTPUTS = ("settings.json", "summary.json", "summary.md", "pass_at_k.png",
           "gsm8k/per_problem.jsonl", "gsm8k/summary.json")


@pytest.fixture(scope="module")
def inputs(student, shared_data, module_bucket_root, tmp_path_factory):
    """(local paths, their bucket copies): checkpoint, tokenizer, benchmark file."""
    ckpt, sp = student
    staging = tmp_path_factory.mktemp("upload") / "ckpt"
    shutil.copytree(ckpt, staging)
    storage.publish_dir(str(staging), f"{BUCKET}/ckpt")
    bench = shared_data / "gsm8k_test.jsonl"
    remote = {"ckpt": f"{BUCKET}/ckpt", "sp": f"{BUCKET}/tok.model",
              "bench": f"{BUCKET}/gsm8k_test.jsonl"}
    for local, url in ((sp, remote["sp"]), (bench, remote["bench"])):
        storage.upload_file(str(local), url)
    return {"ckpt": str(ckpt), "sp": str(sp), "bench": str(bench)}, remote


def _run(paths, shared_data, out):
    c = _config((paths["ckpt"], paths["sp"]), shared_data, out, names=("gsm8k",),
                **{"benchmarks.gsm8k.path": paths["bench"]})
    return evaluate(c)


def _as_local(text: str, local: dict, remote: dict) -> str:
    """A bucket output's text with every bucket path swapped for its local one."""
    for key, url in remote.items():
        text = text.replace(url, local[key])
    return text


@pytest.fixture(scope="module")
def both(inputs, shared_data, tmp_path_factory):
    local, remote = inputs
    local["out"], remote["out"] = str(tmp_path_factory.mktemp("local_eval")), f"{BUCKET}/out"
    moves = FakeBucket.moves
    reports = {"local": _run(local, shared_data, local["out"]),
               "bucket": _run(remote, shared_data, remote["out"])}
    return local, remote, reports, FakeBucket.moves - moves


def test_a_bucket_evaluation_writes_what_a_local_one_writes(both):
    local, remote, reports, moves = both
    assert moves == 0
    assert reports["bucket"]["benchmarks"]["gsm8k"]["problems"] == 3
    for name in OUTPUTS:
        mine = storage.read_bytes(f"{remote['out']}/{name}")
        theirs = open(os.path.join(local["out"], name), "rb").read()
        if name.endswith(".png"):
            assert mine == theirs
        else:      # settings, summaries and the table name the input paths
            assert _as_local(mine.decode(), local, remote) == theirs.decode(), name
    assert not storage.exists(f"{remote['out']}/gsm8k/partial.jsonl")


def test_a_bucket_evaluation_resumes_from_its_partial_results(both, shared_data):
    local, remote, reports, _ = both
    lines = storage.read_text(f"{remote['out']}/gsm8k/per_problem.jsonl").splitlines()
    # What a run killed after its first chunk leaves: that chunk's results, whole (its
    # texts marked, to show that the resumed run keeps them instead of sampling again).
    first = dict(json.loads(lines[0]), texts=["kept", "kept"])
    out = f"{BUCKET}/resumed"
    storage.write_text_atomic(f"{out}/gsm8k/partial.jsonl", json.dumps(first) + "\n")
    storage.write_bytes_atomic(f"{out}/settings.json",
                               storage.read_bytes(f"{remote['out']}/settings.json"))
    report = _run(dict(remote, out=out), shared_data, out)
    assert report["benchmarks"] == reports["bucket"]["benchmarks"]
    resumed = storage.read_text(f"{out}/gsm8k/per_problem.jsonl").splitlines()
    assert json.loads(resumed[0])["texts"] == ["kept", "kept"]
    assert resumed[1:] == lines[1:]


def test_partial_results_on_a_bucket_are_rewritten_whole(module_bucket_root):
    from distill_jax.data.prompts import Prompt
    prompts = [Prompt(f"p{i}", "q", "math", "s", {"answer": "1"}) for i in range(3)]
    done = [ProblemResult(f"p{i}", "math", 1, 0, [None], ["no_answer"], ["t"], ["length"], False)
            for i in range(3)]
    out = f"{BUCKET}/partial"
    _record_finished(out, done[:1], done[:1])
    assert [r.prompt_id for r in _finished(out, prompts)] == ["p0"]
    _record_finished(out, done[1:], done)
    assert [r.prompt_id for r in _finished(out, prompts)] == ["p0", "p1", "p2"]
    assert [json.loads(line)["prompt_id"]
            for line in storage.read_text(f"{out}/partial.jsonl").splitlines()] == \
        ["p0", "p1", "p2"]
