"""distill-generate: shards, resume after interruption, manifest, CLI, bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import generate_gsm8k
from distill_jax.data.prompts import load_prompts
from distill_jax.data.topk_store import TopKReader, topk_arrays
from distill_jax.sampling.generate import generate_traces, shard_name, shard_stem
from distill_jax.tokenizer import load_tokenizer
from tests.compile_cache import compile_cache_env
from tests.overrides import apply_overrides
from tests.tiny_models import arithmetic_tokenizer, tiny_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A SentencePiece tokenizer and a tiny random teacher saved as an HF checkpoint."""
    root = tmp_path_factory.mktemp("teacher")
    sp = arithmetic_tokenizer(root)
    tiny_checkpoint(root / "ckpt", load_tokenizer(sp).vocab_size)
    return sp, str(root / "ckpt")


def _config(teacher, shared_data, out_dir, **overrides):
    c = generate_gsm8k.get_config()
    c.output_dir = str(out_dir)
    c.prompts.path = str(shared_data / "gsm8k_test.jsonl")
    c.prompts.limit = 10
    c.prompts_per_shard = 3
    c.tokenizer.path, c.teacher.checkpoint = teacher
    c.teacher.dtype = c.teacher.param_dtype = "float32"
    c.sampling.n = 2
    c.sampling.temperature = 1.0
    c.sampling.max_new_tokens = 16
    c.sampling.return_top_k = 2
    c.num_slots = 8                    # one per device of the 8-device test mesh
    return apply_overrides(c, overrides)


def _shards(path):
    """Every shard and top-k sidecar file: name -> bytes."""
    return {name: (path / name).read_bytes() for name in sorted(os.listdir(path))
            if name.startswith("shard-")}


def _records(path):
    return [json.loads(line) for name in sorted(os.listdir(path))
            if name.startswith("shard-") and name.endswith(".jsonl") for line in open(path / name)]


def test_interrupt_and_resume_is_byte_identical(teacher, shared_data, tmp_path):
    full = generate_traces(_config(teacher, shared_data, tmp_path / "full"))
    assert full["complete_shards"] == 4 and full["samples"] == 20
    assert sum(full["finish_reasons"].values()) == 20

    part = tmp_path / "part"
    first = generate_traces(_config(teacher, shared_data, part, max_shards=1))
    assert first["complete_shards"] == 1
    # A crash mid-shard leaves only temp files behind, never a partial shard.
    (part / (shard_name(1, 4) + ".tmp.12345")).write_text('{"partial": tru')
    (part / (shard_stem(1, 4) + ".topk_ids.npy.tmp.12345")).write_bytes(b"\x93NUM")
    # A crash between a shard's sidecar (committed first) and its JSONL: the shard
    # is not done, so it is redone and its sidecar rewritten.
    for suffix in (".topk_ids.npy", ".topk_logprobs.npy"):
        (part / (shard_stem(2, 4) + suffix)).write_bytes(b"stale")
    second = generate_traces(_config(teacher, shared_data, part, max_shards=2))
    assert second["complete_shards"] == 3 and second["shards_written_this_run"] == 2
    assert not [name for name in os.listdir(part) if ".tmp." in name]
    generate_traces(_config(teacher, shared_data, part))
    full_files = _shards(tmp_path / "full")
    assert sum(name.endswith(".npy") for name in full_files) == 8    # 4 shards x 2 sidecars
    assert _shards(part) == full_files
    # Nothing left to do: a rerun writes nothing.
    again = generate_traces(_config(teacher, shared_data, part))
    assert again["shards_written_this_run"] == 0 and again["samples"] == 20


def test_shards_do_not_depend_on_the_scheduler_and_barely_on_the_slot_count(
        teacher, shared_data, tmp_path):
    """Static and continuous scheduling on 8 slots (1 per device of the 8-device mesh):
    the same shard bytes. On 16 slots (2 per device) the decode step's matrix
    products have another row count, which XLA:CPU rounds differently in the last
    bit: the same tokens, texts and finish reasons, logprobs within 2e-6 (the
    engine's promise is the same bits for the same slots per device; see
    sampling/generate.py)."""
    runs = {}
    for name, overrides in {"continuous-8": {}, "static-8": {"scheduler": "static"},
                            "continuous-16": {"num_slots": 16}}.items():
        summary = generate_traces(_config(teacher, shared_data, tmp_path / name, **overrides))
        runs[name] = _shards(tmp_path / name)
        assert summary["num_slots"] == int(name.split("-")[1])
        assert 0 < summary["slot_utilization"] <= 1
    assert runs["static-8"] == runs["continuous-8"]
    a, b = (_records(tmp_path / name) for name in ("continuous-8", "continuous-16"))
    reader = TopKReader()
    for x, y in zip(a, b, strict=True):
        for key in ("prompt_id", "sample_index", "token_ids", "text", "finish_reason", "top_k"):
            assert x[key] == y[key]
        np.testing.assert_allclose(x["logprobs"], y["logprobs"], atol=2e-6)
        (x_ids, x_lp), (y_ids, y_lp) = (topk_arrays(r, str(tmp_path / name), reader) for r, name
                                        in ((x, "continuous-8"), (y, "continuous-16")))
        np.testing.assert_array_equal(x_ids, y_ids)
        # float16 in the sidecar: a last-bit change may round to the neighbouring float16.
        np.testing.assert_allclose(x_lp, y_lp, rtol=2 ** -10, atol=2e-6)


def test_records_carry_what_later_stages_need(teacher, shared_data, tmp_path):
    generate_traces(_config(teacher, shared_data, tmp_path))
    records = _records(tmp_path)
    prompts = load_prompts(str(shared_data / "gsm8k_test.jsonl"), "gsm8k", limit=10)
    assert [r["prompt_id"] for r in records[::2]] == [p.id for p in prompts]
    assert [r["sample_index"] for r in records[:4]] == [0, 1, 0, 1]
    tok = load_tokenizer(teacher[0])
    for r in records:
        assert r["reference"]["answer"] == next(p.reference["answer"] for p in prompts
                                                if p.id == r["prompt_id"])
        assert r["prompt"].endswith("<|im_start|>assistant\n<think>\n")
        assert "Please reason step by step" in r["prompt"]
        assert r["text"] == tok.decode(r["token_ids"])
        assert len(r["logprobs"]) == len(r["token_ids"]) == r["num_tokens"]
        assert r["finish_reason"] in ("stop", "length")
        assert r["teacher_id"] == "ckpt" and r["sampling"]["temperature"] == 1.0
    # Samples of one prompt differ (n=2 at temperature 1).
    assert records[0]["token_ids"] != records[1]["token_ids"]


def test_top_k_goes_to_sidecars_or_inline_json(teacher, shared_data, tmp_path):
    """Default: each shard's top-k in binary sidecars, records carry refs to their rows;
    top_k_format="json" writes the old inline lists. Both read back alike."""
    generate_traces(_config(teacher, shared_data, tmp_path / "npy"))
    generate_traces(_config(teacher, shared_data, tmp_path / "json", top_k_format="json"))
    npy, inline = _records(tmp_path / "npy"), _records(tmp_path / "json")
    assert sorted(os.listdir(tmp_path / "npy")) == sorted(
        ["manifest.json", "summary.json"] + [shard_stem(k, 4) + suffix for k in range(4)
                                             for suffix in (".jsonl", ".topk_ids.npy",
                                                            ".topk_logprobs.npy")])
    assert not [name for name in os.listdir(tmp_path / "json") if name.endswith(".npy")]
    rows = {}
    reader = TopKReader()
    for r, q in zip(npy, inline, strict=True):
        assert "top_k_ids" not in r and "top_k_logprobs" not in r and "top_k" not in q
        stem = shard_stem((int(r["prompt_id"].split("-")[-1])) // 3, 4)
        assert r["top_k"] == {"file": stem, "row": rows.get(stem, 0), "rows": r["num_tokens"],
                              "k": 2, "dtype": "float16"}
        rows[stem] = rows.get(stem, 0) + r["num_tokens"]
        ids, lp = topk_arrays(r, str(tmp_path / "npy"), reader)
        assert ids.shape == lp.shape == (r["num_tokens"], 2)
        assert ids.tolist() == q["top_k_ids"]
        np.testing.assert_allclose(lp, q["top_k_logprobs"], rtol=2 ** -11, atol=1e-6)
        assert (lp[:, 0] >= lp[:, 1]).all()      # best first
    for stem, n in rows.items():     # a shard's sidecar holds exactly its records' rows
        assert np.load(tmp_path / "npy" / (stem + ".topk_ids.npy")).shape == (n, 2)


def test_changed_settings_refuse_to_mix(teacher, shared_data, tmp_path):
    generate_traces(_config(teacher, shared_data, tmp_path, max_shards=1))
    with pytest.raises(ValueError, match=r"manifest.json was written with different settings "
                                         r"\(sampling\)"):
        generate_traces(_config(teacher, shared_data, tmp_path, **{"sampling.temperature": 0.5}))


def test_malformed_prompt_line_is_named(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "problem": "x", "answer": "1"}\n{"id": "b", "problem": \n')
    with pytest.raises(ValueError, match=r"p.jsonl:2: malformed JSON"):
        load_prompts(str(path))
    path.write_text('{"id": "a", "problem": "x"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:1: missing field 'answer'"):
        load_prompts(str(path))
    path.write_text('{"id": "a", "problem": "x", "answer": 1}\n' * 2)
    with pytest.raises(ValueError, match=r"p.jsonl:2: duplicate prompt id 'a'"):
        load_prompts(str(path))


def test_builtin_formats_read_the_shared_data(shared_data):
    assert len(load_prompts(str(shared_data / "gsm8k_test.jsonl"), "gsm8k")) == 1319
    math = load_prompts(str(shared_data / "math500_test.jsonl"), "math500")
    assert len(math) == 500 and math[0].reference["answer"]
    assert len(load_prompts(str(shared_data / "aime24_test.jsonl"), "aime24")) == 30
    he = load_prompts(str(shared_data / "humaneval.jsonl"), "humaneval")
    assert len(he) == 164 and he[0].kind == "code" and he[0].reference["entry_point"]
    assert "```python" in he[0].user_message()


def test_cli_runs_and_reports(teacher, shared_data, tmp_path):
    sp, ckpt = teacher
    cmd = [sys.executable, "-m", "distill_jax.cli.generate",
           f"--config={REPO}/configs/generate_gsm8k.py", f"--config.output_dir={tmp_path}",
           f"--config.prompts.path={shared_data / 'gsm8k_test.jsonl'}",
           "--config.prompts.limit=4", "--config.prompts_per_shard=2",
           f"--config.tokenizer.path={sp}", f"--config.teacher.checkpoint={ckpt}",
           "--config.teacher.dtype=float32", "--config.sampling.max_new_tokens=8",
           "--config.sampling.n=1", "--config.num_slots=2"]
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "generate: 2/2 shards, 4 samples" in result.stdout
    assert "generate 4/4 prompts" in result.stderr and "ETA" in result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["samples"] == 4 and summary["total_tokens"] > 0


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_byte_identical(teacher, shared_data, tmp_path):
    """A real crash: the CLI is killed as soon as its first shard lands, then rerun."""
    import signal
    import time
    sp, ckpt = teacher

    def cmd(out):
        return [sys.executable, "-m", "distill_jax.cli.generate",
                f"--config={REPO}/configs/generate_gsm8k.py", f"--config.output_dir={out}",
                f"--config.prompts.path={shared_data / 'gsm8k_test.jsonl'}",
                "--config.prompts.limit=24", "--config.prompts_per_shard=2",
                f"--config.tokenizer.path={sp}", f"--config.teacher.checkpoint={ckpt}",
                "--config.teacher.dtype=float32", "--config.sampling.max_new_tokens=48",
                "--config.sampling.n=2", "--config.sampling.temperature=0.8",
                "--config.num_slots=4"]
    # The three runs compile the same programs: the first compiles, the others load them.
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu",
               **compile_cache_env(tmp_path / "jax_cache"))
    subprocess.run(cmd(tmp_path / "full"), check=True, capture_output=True, cwd=REPO, env=env,
                   timeout=300)
    proc = subprocess.Popen(cmd(tmp_path / "killed"), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = tmp_path / "killed" / shard_name(0, 12)
    deadline = time.time() + 240
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_when_killed = len(_shards(tmp_path / "killed"))
    assert 1 <= done_when_killed < 12, "the kill should land mid-run"
    subprocess.run(cmd(tmp_path / "killed"), check=True, capture_output=True, cwd=REPO, env=env,
                   timeout=300)
    assert _shards(tmp_path / "killed") == _shards(tmp_path / "full")


def test_generated_shards_go_through_distill_filter(teacher, shared_data, tmp_path):
    """The filter stage reads what generate writes; every sample is accounted for."""
    generate_traces(_config(teacher, shared_data, tmp_path / "traces"))
    out = tmp_path / "curated"
    cmd = [sys.executable, "-m", "distill_jax.cli.filter",
           f"--config={REPO}/configs/filter_default.py",
           f"--config.input.path={tmp_path / 'traces'}", f"--config.output_dir={out}",
           f"--config.decontamination.data_dir={shared_data}", "--config.num_workers=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert len(report["input"].pop("files")) == 4
    assert report["input"] == {"lines": 20, "samples": 20, "prompts": 10, "malformed_lines": 0,
                               "malformed": [], "format": "distill", "units": 4}
    # The prompts are GSM8K *test* problems: decontamination removes them all.
    assert report["stages"][0] == {"name": "decontaminate", "in": 20, "out": 0,
                                   "rejected": {"contaminated_gsm8k_test": 20}}
    assert report["output"]["samples"] == 0 and report["output"]["tfds"] is None
    assert "decontaminate" in proc.stdout and "contaminated_gsm8k_test=20" in proc.stdout
    records = [json.loads(line) for line in open(out / "audit" /
                                                 "decontaminate-contaminated_gsm8k_test.jsonl")]
    assert {r["prompt_id"] for r in records} == {f"gsm8k_test-{k}" for k in range(10)}
    # Without decontamination, the random teacher's 16-token samples are cut off.
    proc = subprocess.run(cmd[:-1] + ["--config.filters.order=('truncated', 'correctness')",
                                      "--config.force=True"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    truncated = report["stages"][0]
    assert truncated["name"] == "truncated" and truncated["in"] == 20
    assert truncated["rejected"].get("truncated", 0) == sum(
        1 for r in _records(tmp_path / "traces") if r["finish_reason"] == "length")
