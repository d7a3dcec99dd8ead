"""distill-generate -> distill-filter -> distill-train -> distill-evaluate with R1's
chat format on tiny Qwen2-shaped checkpoints and tokenizer.json tokenizers, the
way a first real run goes: an R1-Distill-like teacher (its tokenizer has
DeepSeek's markers) and a Qwen-like base student (it has not: training adds
them, `data.add_chat_tokens`). Generation, SFT and evaluation must start the
assistant turn identically, with exactly one "<think>\\n", and the export must
render prompts exactly as training did, for transformers too."""
import functools
import json
import shutil

import jax
import numpy as np
import pytest

from configs import (evaluate_gsm8k, filter_default, generate_gsm8k, kd_soft_target,
                     r1_distill_qwen_1p5b)
from distill_jax import models
from distill_jax.data.sft import encode_example
from distill_jax.data.sources import open_source
from distill_jax.demo import arithmetic
from distill_jax.evaluation.runner import evaluate
from distill_jax.filters.rejection import filter_traces
from distill_jax.sampling.generate import generate_traces
from distill_jax.tokenizer import load_tokenizer
from distill_jax.training.run import load_student, load_teacher, prepare, train
from tests.chat_tokenizers import R1_MARKERS, write_qwen_like, write_r1_like

OPENED = "<｜Assistant｜><think>\n"


@functools.cache
def _init(cfg):
    """init_params as one jitted function per config: checkpoints of one shape and
    other seeds reuse its compiled program."""
    return jax.jit(lambda key: models.init_params(cfg, key))


def _checkpoint(path, tokenizer_dir, vocab_size, seed):
    cfg = models.get_config("tiny-qwen2", vocab_size=vocab_size, tie_word_embeddings=False)
    models.save_hf_checkpoint(path, cfg, _init(cfg)(jax.random.key(seed)))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, path / name)
    return path


def _assistant_turn(prompt: str) -> str:
    """From the last user turn on: what the three stages must agree on."""
    return prompt[prompt.rindex("<｜User｜>"):]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("r1_format")
    base = write_qwen_like(root / "qwen_like")
    real = load_tokenizer(base).vocab_size
    # Padded embeddings, like Qwen's: the student's markers land in its padding.
    teacher = _checkpoint(root / "teacher", write_r1_like(root / "r1_like"), real + 40, 0)
    student = _checkpoint(root / "student", base, real + 10, 1)
    prompts = root / "prompts.jsonl"
    with open(prompts, "w") as f:
        for k, p in enumerate(arithmetic.make_split(3, 0, 4)):
            f.write(json.dumps({"id": f"p{k}", "problem": p.question,
                                "answer": str(p.answer)}) + "\n")

    g = generate_gsm8k.get_config()
    g.output_dir = str(root / "traces")
    g.prompts.path, g.prompts.format = str(prompts), "jsonl"
    g.tokenizer.path, g.tokenizer.chat_template = str(teacher), "deepseek-r1"
    g.teacher.checkpoint = str(teacher)
    g.teacher.dtype = g.teacher.param_dtype = "float32"
    g.sampling.n, g.sampling.max_new_tokens, g.sampling.temperature = 2, 8, 1.0
    g.num_slots, g.mesh = 8, None
    generate_traces(g)

    f = filter_default.get_config()
    f.input.path, f.output_dir = g.output_dir, str(root / "curated")
    f.filters.order = ("length",)                   # a random teacher: keep everything
    f.filters.length.min_tokens = 1
    f.num_workers = 1
    filter_traces(f)

    t = r1_distill_qwen_1p5b.get_config()           # the shipped recipe, tiny-sized
    t.workdir = str(root / "run")
    t.data.path = str(root / "curated" / "tfds")
    t.data.tokenizer_path = str(base)
    t.data.seq_len, t.data.packing = 96, False
    t.model.checkpoint = str(student)
    t.model.dtype = t.model.param_dtype = "float32"
    t.model.remat_policy = "none"
    t.train.batch_size, t.train.num_steps, t.train.log_every = 2, 2, 1
    t.train.export_dir, t.train.export_dtype = str(root / "export"), "float32"
    t.train.tensorboard = False
    t.mesh = None
    summary = train(t)

    e = evaluate_gsm8k.get_config()
    e.model.checkpoint = str(root / "export")
    e.model.dtype = e.model.param_dtype = "float32"
    e.benchmarks.gsm8k.path, e.benchmarks.gsm8k.format = str(prompts), "jsonl"
    e.benchmarks.gsm8k.k, e.sampling.max_new_tokens = 1, 4
    e.output_dir, e.mesh = str(root / "eval"), None
    evaluate(e)
    return root, t, summary, real


def test_the_three_stages_start_the_assistant_turn_identically(run):
    root, train_config, _, _ = run
    generated = [json.loads(line) for path in sorted((root / "traces").glob("shard-*.jsonl"))
                 for line in path.read_text().splitlines()]
    evaluated = [json.loads(line) for line in
                 (root / "eval" / "gsm8k" / "per_problem.jsonl").read_text().splitlines()]
    assert generated and len(evaluated) == 4
    prompts = {r["prompt_id"]: r["prompt"] for r in generated}
    for r in generated:
        assert r["prompt"].endswith(OPENED) and r["prompt"].count("<think>\n") == 1
        assert r["assistant_prefix"] == "<think>\n"
    for r in evaluated:
        assert r["prompt"].endswith(OPENED) and r["prompt"].count("<think>\n") == 1
        assert _assistant_turn(r["prompt"]) == _assistant_turn(prompts[r["prompt_id"]])

    # SFT: the student's example begins with exactly the evaluation prompt's tokens.
    student = prepare(train_config)
    tokenizer = student.tokenizer
    eval_prompts = {r["prompt_id"]: r["prompt"] for r in evaluated}
    source = open_source(train_config.data.path)
    for k in range(len(source)):
        record = {key: (v.decode() if isinstance(v, bytes) else v)
                  for key, v in source[k].items()}
        ids = encode_example(record, student.chat_format)["ids"].tolist()
        prompt_ids = tokenizer.encode(eval_prompts[record["prompt_id"]])
        assert ids[:len(prompt_ids)] == prompt_ids
        head = tokenizer.decode(ids[:len(prompt_ids)])
        assert _assistant_turn(head) == _assistant_turn(prompts[record["prompt_id"]])


def test_training_added_the_markers_and_exports_the_format(run):
    import transformers
    root, _, summary, real = run
    assert summary["added_tokens"] == ["<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"]
    export = root / "export"
    ours = load_tokenizer(export)
    assert ours.vocab_size == real + 3
    cfg, params = models.load_hf_checkpoint(str(export))
    assert cfg.vocab_size == real + 10             # the markers fit the padding: no growth
    # The markers' rows started at the mean of the real rows; two steps moved them
    # only a little, while padding rows stay as they were.
    _, before = models.load_hf_checkpoint(str(root / "student"))
    embedding, original = np.asarray(params["embedding"]), np.asarray(before["embedding"])
    mean = original[:real].mean(axis=0)
    assert np.abs(embedding[real:real + 3] - mean).max() < 0.05
    np.testing.assert_array_equal(embedding[real + 3:], original[real + 3:])

    generation = json.loads((export / "generation_config.json").read_text())
    assert generation["eos_token_id"][0] == ours.token_to_id(R1_MARKERS[1])
    theirs = transformers.AutoTokenizer.from_pretrained(str(export))
    for messages, gen in (([{"role": "user", "content": "What is 3 + 4?"}], True),
                          ([{"role": "user", "content": "What is 3 + 4?"},
                            {"role": "assistant", "content": "<think>\n7\n</think>\n7"}], False)):
        text = ours.apply_chat_template(messages, add_generation_prompt=gen)
        assert text == theirs.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=gen)
        assert ours.encode(text) == list(theirs.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=gen, return_dict=False))
    assert text.endswith("<｜Assistant｜><think>\n7\n</think>\n7<｜end▁of▁sentence｜>")


def test_the_shipped_kd_config_runs_across_padded_vocabularies(run):
    """configs/kd_soft_target.py shape: a Qwen-like teacher whose embedding is padded
    further than the student's (152,064 vs 151,936 rows in the real pair) and a
    student that adds R1's markers; KD runs over the real ids both tokenizers share."""
    root, sft, _, real = run
    base = root / "qwen_like"
    teacher = _checkpoint(root / "kd_teacher", base, real + 40, 2)
    c = kd_soft_target.get_config()
    c.workdir = str(root / "kd_run")
    c.data = sft.data
    c.model = sft.model
    c.kd.teacher.checkpoint = str(teacher)
    c.kd.teacher.dtype = c.kd.teacher.param_dtype = "float32"
    c.train.batch_size, c.train.num_steps, c.train.log_every = 2, 2, 1
    c.train.tensorboard, c.mesh = False, None
    summary = train(c)
    assert summary["kd_vocab_size"] == real and summary["added_tokens"]
    rows = [json.loads(line) for line in (root / "kd_run" / "metrics.jsonl").read_text()
            .splitlines()]
    assert len(rows) == 2
    for r in rows:
        assert r["loss"] == pytest.approx(0.5 * r["kd"] + 0.5 * r["ce"], rel=1e-5)
    # Step 1's KD, recomputed in numpy from the starting params and the first batch:
    # T^2 * KL(teacher_T || student_T) over the shared ids only, mean over targets.
    c.workdir = str(root / "kd_reference")
    ref = prepare(c)
    batch = next(iter(ref.pipeline.dataset()))
    student_params, teacher_params = load_student(ref), load_teacher(ref)

    def logits(cfg, params):
        forward = jax.jit(models.Transformer(cfg).apply)     # one program, not one per op
        return np.asarray(forward(
            {"params": params}, batch["inputs"], positions=batch["positions"],
            segment_ids=batch["segment_ids"]), np.float64)[..., :real] / c.kd.temperature

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))
    log_q = log_softmax(logits(ref.cfg, student_params))
    log_p = log_softmax(logits(ref.teacher_cfg, teacher_params))
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1) * c.kd.temperature ** 2
    mask = batch["loss_mask"] * (batch["segment_ids"] > 0)
    assert rows[0]["kd"] == pytest.approx((kl * mask).sum() / mask.sum(), rel=1e-4)
