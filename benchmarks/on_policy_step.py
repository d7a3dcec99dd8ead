"""Where the time of one on-policy distillation step goes (kd.mode="on_policy"), on
the demo's models, and our on-policy sampling vs the `distill-generate` path.

Models: the demo's teacher (distill_jax/demo/config.py: tiny-llama shape, hidden 128 /
4 layers) and a student of hidden 96 / 3 layers (the demo's small student size when
these numbers were measured; it is 64 / 2 now), **random weights**
(preset init, seeds 1 and 2), float32, the demo's SentencePiece tokenizer trained
here (vocab 512) and its chat template (chatml, R1 math suffix, "<think>\\n"
opener). The run is built exactly as `distill-train` builds it (`run.prepare`,
`run.resume_or_init`, `run.load_teacher`) with the demo's on-policy arm: 16 rows
per step = 8 prompts x n=2, max_new_tokens 96, temperature 1.0, reverse KL, seq_len
192, a one-device mesh. Everything lives in a temporary directory.

Part 1, the step split. Each round is one step of the training loop, in its order:
  sampling   `OnPolicyBatches.sample` of the step's 8 prompts (update_params, the
             Sampler's generate of 16 samples, rows_from_samples)
  teacher    a jitted teacher forward on the step's rows (`Transformer.hidden_states`
             + `lm_head`, cut to the shared vocabulary), returning the teacher's
             log-probability of every sampled token: what the step computes for the
             teacher, without gradient, as a program of its own
  step       `Trainer.step`: teacher forward (no gradient) + student forward and
             backward + AdamW update, one jitted program
  update     step minus teacher (median of the per-round differences): the student's
             forward, backward and the optimizer update
  score      `Trainer.score` (reported aside): teacher forward + student forward +
             the loss sums, no gradient and no update (the held-out evaluation path)
Every program is compiled in warm-up rounds first; then `--rounds` rounds, each
part's median reported. The step's time is sampling + Trainer.step (the loop waits
for the step's loss before it samples again: the next samples need its params).

Part 2, sampling tokens/s. The same 8 prompts, n=2, max_new_tokens 96, temperature
1.0, top_p 1.0, seed 0 and 16 slots through (a) `OnPolicyBatches.sample` and (b)
`generate_traces` (distill-generate) with the student's weights saved as an HF
checkpoint (`models.save_hf_checkpoint`, float32) as its "teacher"; alternated round
by round (`common.interleaved`, one warm-up each). (b) is reported twice: its own
summary's `run_tokens_per_s` (its clock starts before it loads the checkpoint and
ends after writing the shards) and tokens over the whole call's wall time. Same
weights and seeds, so the two must draw the same tokens: checked row by row.

Part 3, the loss's backward memory (`part_memory`): XLA's temporary bytes of the
compiled chunked-loss gradient per on-policy loss, against online KD's.

  python benchmarks/on_policy_step.py [--rounds 10] [--quick] [--parts split,tokens,memory]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, REPO)
from common import interleaved, machine  # noqa: E402

from configs import demo_cpu  # noqa: E402
from distill_jax import models  # noqa: E402
from distill_jax.data.prompts import R1_MATH_SUFFIX  # noqa: E402
from distill_jax.demo import arithmetic  # noqa: E402
from distill_jax.sampling import sampler as sampler_lib  # noqa: E402
from distill_jax.sampling.config import default_config as generate_defaults  # noqa: E402
from distill_jax.sampling.generate import generate_traces  # noqa: E402
from distill_jax.sampling.sampler import DEFAULT_LENGTH_BUCKETS, bucket  # noqa: E402
from distill_jax.tokenizer import train_sentencepiece  # noqa: E402
from distill_jax.training import on_policy  # noqa: E402
from distill_jax.training import run as run_lib  # noqa: E402
from distill_jax.training.config import base_config  # noqa: E402

MODEL_FIELDS = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                "head_dim")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def all_compiles() -> int:
    """XLA compilations so far in this process, of any jitted function."""
    return sum(sampler_lib.COMPILES.values())


# ------------------------------------------------------------------ setup
def write_inputs(root: str, demo, num_prompts: int) -> tuple[str, str]:
    """The demo's tokenizer (its corpus: question, R1 suffix, worked solution) and a
    prompts JSONL (id/problem/answer) of the demo's training-prompt range."""
    problems = arithmetic.make_split(demo.seed, 0, 2000)
    corpus = [f"{p.question}\n{R1_MATH_SUFFIX}\n<think>\n{p.solution}\n</think>\n"
              f"The answer is \\boxed{{{p.answer}}}." for p in problems]
    tokenizer = train_sentencepiece(corpus, os.path.join(root, "tokenizer", "tok"),
                                    vocab_size=demo.tokenizer_vocab_size)
    prompts = os.path.join(root, "prompts.jsonl")
    with open(prompts, "w") as f:
        for k, p in enumerate(arithmetic.make_split(demo.seed, 10**6, num_prompts)):
            f.write(json.dumps({"id": f"train-{k}", "problem": p.question,
                                "answer": str(p.answer)}) + "\n")
    return tokenizer, prompts


def train_config(root: str, demo, tokenizer: str, prompts: str, args):
    """The demo's on_policy arm (demo/pipeline.py `_on_policy`), from random weights."""
    t, oc = demo.teacher, demo.on_policy
    # The student the numbers in BENCHMARKS.md were measured with: hidden 96, 3 layers
    # (the demo's student until issue 20, then its small student size until that
    # became 64 wide and 2 deep).
    s = dict(demo.student)
    s.update(hidden_size=96, intermediate_size=256, num_layers=3, head_dim=24)
    c = base_config()
    c.workdir = os.path.join(root, "run")
    c.seed = demo.seed
    c.data.path = ""
    c.data.tokenizer_path = tokenizer
    c.data.chat_template = "chatml"
    c.data.seq_len = args.seq_len
    c.model.preset, c.model.init_seed = s["preset"], s["init_seed"]
    c.model.dtype = c.model.param_dtype = "float32"
    c.model.overrides = {k: s[k] for k in MODEL_FIELDS}
    c.kd.mode, c.kd.kind = "on_policy", oc.kind
    c.kd.teacher.update(preset=t.preset, init_seed=t.init_seed, dtype="float32",
                        param_dtype="float32")
    c.kd.teacher.overrides = {k: t[k] for k in MODEL_FIELDS}
    c.train.batch_size = args.rows
    c.train.num_steps = oc.num_steps
    c.train.learning_rate, c.train.warmup_steps = oc.learning_rate, oc.warmup_steps
    c.train.final_lr_fraction, c.train.weight_decay = 0.1, 0.0
    c.train.tensorboard = False
    c.on_policy.prompts.path = prompts
    c.on_policy.update(n=args.n, max_new_tokens=args.max_new_tokens, temperature=1.0,
                       top_p=1.0)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
    if args.quick:
        c.model.overrides["num_layers"] = 1
        c.kd.teacher.overrides["num_layers"] = 2
    return c


def teacher_scorer(run):
    """A jitted teacher forward -> log-probability of each sampled token (0 elsewhere):
    the teacher's share of `Trainer.step`, on its own, without gradient."""
    tcfg, shared = run.teacher_cfg, run.trainer.kd_vocab_size
    model = models.Transformer(tcfg)

    @jax.jit
    def score(teacher_params, batch):
        hidden = model.apply({"params": teacher_params}, batch["inputs"],
                             positions=batch["positions"], segment_ids=batch["segment_ids"],
                             method="hidden_states")
        kernel, layout = models.lm_head(teacher_params, tcfg)
        logits = models.head_logits(hidden, kernel, jnp.dtype(tcfg.dtype), layout)[..., :shared]
        logprobs = jax.nn.log_softmax(logits, axis=-1)
        targets = jnp.minimum(batch["targets"], shared - 1)
        token = jnp.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0]
        mask = batch["loss_mask"] * (batch["segment_ids"] > 0)
        return jnp.where(mask > 0, token, 0.0)

    fields = ("inputs", "targets", "loss_mask", "segment_ids", "positions")
    return lambda params, batch: score(params, {k: batch[k] for k in fields})


def sample_tokens(batch) -> list[list[int]]:
    """Each row's sampled tokens (the completion targets)."""
    return [row[mask > 0].tolist() for row, mask in zip(batch["targets"], batch["loss_mask"])]


# ------------------------------------------------------------------ part 1
def part_split(args, run, state, batches, teacher):
    trainer, kd, seed = run.trainer, run.kd, run.config.seed
    prompt_set = batches.prompt_set
    per_step = batches.prompts_per_step
    score_teacher = teacher_scorer(run)

    # Warm-up of the sampler's programs: one prompt of every length bucket the prompt
    # set has (each bucket is an insert program of its own).
    by_bucket = {}
    for i, ids in enumerate(prompt_set.token_ids):
        by_bucket.setdefault(bucket(len(ids), DEFAULT_LENGTH_BUCKETS, "prompt"), i)
    lengths = [len(ids) for ids in prompt_set.token_ids]
    print(f"prompts: {len(prompt_set)} rendered to {min(lengths)}-{max(lengths)} tokens "
          f"(length buckets {sorted(by_bucket)}); {per_step} per step x n={args.n} = "
          f"{args.rows} rows of {args.seq_len}, max_new_tokens {args.max_new_tokens}")
    batches.sample(prompt_set, list(by_bucket.values()), state.params, 12345)

    times = {k: [] for k in ("sampling", "teacher", "step", "score")}
    tokens_per_s, lengths_sampled, checks = [], [], []
    compiles_before = None
    for r in range(args.warmups + args.rounds):
        if r == args.warmups:
            compiles_before = all_compiles()
        idx, epochs = on_policy.prompts_for_step(len(prompt_set), per_step, r, seed)
        start = time.perf_counter()
        batch, stats = batches.sample(prompt_set, idx, state.params, on_policy.step_seed(seed, r),
                                      epochs)
        t_sample = time.perf_counter() - start

        start = time.perf_counter()
        teacher_lp = jax.block_until_ready(score_teacher(teacher, batch))
        t_teacher = time.perf_counter() - start

        start = time.perf_counter()
        scored = jax.device_get(trainer.score(state.params, batch, teacher, kd))
        t_score = time.perf_counter() - start

        start = time.perf_counter()
        state, metrics = trainer.step(state, batch, teacher, kd)
        loss = float(metrics["loss"])        # what the loop waits for before sampling again
        t_step = time.perf_counter() - start

        # The standalone teacher scores what the step's teacher scores.
        n_tok = float(np.sum(batch["loss_mask"]))
        mine = float(np.sum(np.asarray(teacher_lp))) / n_tok
        checks.append(abs(mine - float(scored["teacher_logprob"])))
        tag = "warm-up" if r < args.warmups else "timed"
        print(f"  round {r} ({tag}): sampling {t_sample:.3f} s ({stats['sample_tokens_per_s']:.0f}"
              f" tok/s, mean length {stats['sample_length']:.1f}, truncated "
              f"{stats['sample_truncated']:.2f}), teacher {t_teacher:.3f} s, score "
              f"{t_score:.3f} s, step {t_step:.3f} s; loss {loss:.4f}, logprob_gap "
              f"{float(metrics['logprob_gap']):.1e}")
        if r >= args.warmups:
            for k, v in (("sampling", t_sample), ("teacher", t_teacher), ("step", t_step),
                         ("score", t_score)):
                times[k].append(v)
            tokens_per_s.append(stats["sample_tokens_per_s"])
            lengths_sampled.append(stats["sample_length"])
    compiled = all_compiles() - compiles_before
    med = {k: float(np.median(v)) for k, v in times.items()}
    med["update"] = float(np.median(np.subtract(times["step"], times["teacher"])))
    total = med["sampling"] + med["step"]
    print(f"\nPart 1: one on-policy step, median of {args.rounds} rounds after {args.warmups} "
          f"warm-up round(s); {compiled} XLA compilations during the timed rounds; mean sample "
          f"length {np.mean(lengths_sampled):.1f} of {args.max_new_tokens}; load average "
          f"{load_average()}")
    rows = [(f"sampling: OnPolicyBatches.sample ({args.rows} samples)", med["sampling"]),
            ("teacher scoring: jitted teacher forward, no grad", med["teacher"]),
            ("update: Trainer.step - teacher (student fwd+bwd, AdamW)", med["update"]),
            ("step = sampling + Trainer.step", total)]
    print(f"  {'part':58s} {'seconds':>8s} {'share':>7s}")
    for name, secs in rows:
        print(f"  {name:58s} {secs:8.3f} {100 * secs / total:6.1f}%")
    print(f"  {'(Trainer.step: teacher fwd + student fwd/bwd + AdamW)':58s} {med['step']:8.3f} "
          f"{100 * med['step'] / total:6.1f}%")
    print(f"  {'(Trainer.score: teacher fwd + student fwd + loss, no grad)':58s} "
          f"{med['score']:8.3f} {100 * med['score'] / total:6.1f}%")
    print(f"  sampling inside the step: {np.median(tokens_per_s):.0f} tok/s (median); the "
          f"standalone teacher's mean logprob matches Trainer.score's to "
          f"{max(checks):.1e}")
    return state, med


# ------------------------------------------------------------------ part 2
def part_tokens_per_s(args, root, run, state, batches, tokenizer):
    prompt_set = batches.prompt_set
    # Step 0's prompts, all from epoch 0 (a step never holds more prompts than the set).
    idx, _ = on_policy.prompts_for_step(len(prompt_set), batches.prompts_per_step, 0,
                                        run.config.seed)
    # The prompts of the comparison as their own JSONL (same ids: same sampling keys).
    prompts = os.path.join(root, "compare_prompts.jsonl")
    with open(prompts, "w") as f:
        for i in idx:
            p = prompt_set.prompts[i]
            f.write(json.dumps({"id": p.id, "problem": p.problem,
                                "answer": p.reference.get("answer", "")}) + "\n")
    params = jax.tree_util.tree_map(jnp.copy, state.params)     # fixed weights for both sides
    hf_dir = os.path.join(root, "student_hf")
    models.save_hf_checkpoint(hf_dir, run.cfg, jax.device_get(params))

    g = generate_defaults()
    g.prompts.path, g.prompts.format, g.prompts.limit = prompts, "jsonl", 0
    g.prompts_per_shard = len(idx)
    g.num_slots = batches.sampler.num_slots
    g.tokenizer.path = tokenizer
    g.tokenizer.chat_template = "chatml"
    g.tokenizer.assistant_prefix = run.config.on_policy.assistant_prefix
    g.teacher.checkpoint = hf_dir
    g.teacher.dtype = g.teacher.param_dtype = "float32"
    g.teacher.id = "student-random-init"
    g.sampling.update(n=args.n, temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens,
                      seed=0, return_top_k=0)
    g.mesh = dict(run.config.mesh)
    assert g.sampling.temperature == batches.sampling.temperature
    assert g.sampling.top_p == batches.sampling.top_p

    results = {"ours": [], "generate": []}
    calls = [0]

    def ours():
        start = time.perf_counter()
        batch, stats = batches.sample(prompt_set, idx, params, 0)
        secs = time.perf_counter() - start
        results["ours"].append(dict(tokens=int(np.sum(batch["loss_mask"])), secs=secs,
                                    rows=sample_tokens(batch)))

    def generate():
        g.output_dir = os.path.join(root, "generate", f"call{calls[0]}")
        calls[0] += 1
        start = time.perf_counter()
        summary = generate_traces(g)
        secs = time.perf_counter() - start
        rows = {}
        for path in sorted(glob.glob(os.path.join(g.output_dir, "shard-*.jsonl"))):
            with open(path) as f:
                for line in f:
                    r = json.loads(line)
                    rows[(r["prompt_id"], r["sample_index"])] = r["token_ids"]
        results["generate"].append(dict(tokens=summary["run_new_tokens"], secs=secs,
                                        own_tps=summary["run_tokens_per_s"],
                                        run_seconds=summary["run_seconds"], rows=rows,
                                        slots=summary["num_slots"]))

    med = interleaved({"ours": ours, "generate": generate}, args.gen_rounds, warmups=1)
    ours_r = results["ours"][1:]              # the warm-up call is the first of each
    gen_r = results["generate"][1:]
    ours_tps = float(np.median([r["tokens"] / r["secs"] for r in ours_r]))
    gen_own = float(np.median([r["own_tps"] for r in gen_r]))
    gen_wall = float(np.median([r["tokens"] / r["secs"] for r in gen_r]))
    # Same weights, prompts, keys and seed: the same tokens, row by row.
    want = gen_r[-1]["rows"]
    got = ours_r[-1]["rows"]
    same = sum(got[k * args.n + j] == want[(prompt_set.prompts[i].id, j)]
               for k, i in enumerate(idx) for j in range(args.n))
    tokens = ours_r[-1]["tokens"]
    print(f"\nPart 2: sampling tokens/s, {len(idx)} prompts x n={args.n}, max_new_tokens "
          f"{args.max_new_tokens}, temperature 1.0, top_p 1.0, {g.num_slots} slots (generate "
          f"used {gen_r[-1]['slots']}), the student's weights; {args.gen_rounds} alternating "
          f"rounds (median) after a warm-up each; load average {load_average()}")
    print(f"  {'path':62s} {'tokens':>7s} {'seconds':>8s} {'tok/s':>7s}")
    print(f"  {'ours: OnPolicyBatches.sample':62s} {tokens:7d} {med['ours']:8.3f} "
          f"{ours_tps:7.0f}")
    print(f"  {'distill-generate: generate_traces, its run_tokens_per_s':62s} "
          f"{gen_r[-1]['tokens']:7d} {float(np.median([r['run_seconds'] for r in gen_r])):8.3f}"
          f" {gen_own:7.0f}")
    print(f"  {'distill-generate: generate_traces, whole call (wall)':62s} "
          f"{gen_r[-1]['tokens']:7d} {med['generate']:8.3f} {gen_wall:7.0f}")
    print(f"  ratio ours / generate: {ours_tps / gen_own:.2f}x (vs its run_tokens_per_s), "
          f"{ours_tps / gen_wall:.2f}x (vs the whole call); identical tokens in "
          f"{same}/{len(idx) * args.n} rows")
    print(f"  generate's extra time per call: {med['generate'] - med['ours']:.3f} s (fixed per "
          "call: checkpoint load, Sampler construction, text decoding, shards and summary)")
    return dict(ours=ours_tps, gen_own=gen_own, gen_wall=gen_wall, same=same)


def part_memory(args) -> None:
    """The loss's backward memory: XLA's temporary bytes of the compiled gradient of
    `chunked_loss_sums` (4 rows x 1024 positions, hidden 64, vocab 32768, chunks of
    256, f32), per loss, in units of one chunk's [rows, chunk, vocab] float32 logits.
    Online KD (kind reverse_kl, with CE) is the reference the planner's `working`
    term is written for (3 chunk-sized copies with a teacher)."""
    from distill_jax.training import chunked_loss
    from distill_jax.training.trainer import KDSettings
    rows, length, hidden, vocab, chunk = 4, 1024, 64, 32768, 256
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(rows, length, hidden)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(hidden, vocab)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, vocab, (rows, length)))
    mask = jnp.ones((rows, length), jnp.float32)
    unit = rows * chunk * vocab * 4
    print(f"\nPart 3: the loss's backward, XLA temporary memory ({rows} rows x {length}, "
          f"vocab {vocab}, chunks of {chunk}; unit: one chunk's f32 logits, "
          f"{unit / 2**20:.0f} MiB)")
    reference = None
    for mode, kind in (("online", "reverse_kl"), ("on_policy", "reverse_kl"),
                       ("on_policy", "jsd"), ("on_policy", "sampled_token")):
        kd = KDSettings(mode=mode, kind=kind, alpha=0.5)

        def loss(h, w):
            sums = chunked_loss.chunked_loss_sums(
                h, w, targets, mask, chunk_size=chunk, kd=kd, teacher_hidden=h,
                teacher_head_kernel=w, kd_vocab_size=vocab)
            return sums["kd_sum"] + (sums["ce_sum"] if mode == "online" else 0.0)
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(h, w).compile()
        units = compiled.memory_analysis().temp_size_in_bytes / unit
        reference = reference or units
        print(f"  {mode:<10} {kind:<14} {units:5.2f} units  ({units / reference:.2f}x online KD)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10,
                        help="timed steps (part 1) and alternating sampling rounds (part 2)")
    parser.add_argument("--warmups", type=int, default=1, help="untimed steps first (compiles)")
    parser.add_argument("--prompts", type=int, default=64, help="prompts in the prompt set")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="0 = the demo's (96)")
    parser.add_argument("--parts", default="split,tokens,memory", help="split,tokens,memory")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 1/2 layers, 4 prompts x 2, 16 new tokens, 1 round")
    args = parser.parse_args()
    demo = demo_cpu.get_config()
    args.n = demo.on_policy.n
    args.rows = demo.on_policy.batch_size
    args.seq_len = demo.seq_len
    args.max_new_tokens = args.max_new_tokens or demo.generate.max_new_tokens
    if args.quick:
        args.rows, args.max_new_tokens, args.rounds, args.prompts = 8, 16, 1, 16
    args.gen_rounds = args.rounds
    parts = set(args.parts.split(","))
    print(f"{machine()}; devices {jax.devices()}; load average {load_average()}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="on_policy_step_") as root:
        tokenizer, prompts = write_inputs(root, demo, args.prompts)
        run = run_lib.prepare(train_config(root, demo, tokenizer, prompts, args))
        state, batches, _ = run_lib.resume_or_init(run)
        teacher = run_lib.load_teacher(run)
        print(f"student {run.cfg.name}: {models.count_params(run.cfg) / 1e6:.2f}M params "
              f"(hidden {run.cfg.hidden_size}, {run.cfg.num_layers} layers), teacher "
              f"{models.count_params(run.teacher_cfg) / 1e6:.2f}M (hidden "
              f"{run.teacher_cfg.hidden_size}, {run.teacher_cfg.num_layers} layers), vocab "
              f"{run.cfg.vocab_size} (KD over {run.trainer.kd_vocab_size}); random weights, "
              f"float32; kd {run.kd.kind}; {batches.sampler.num_slots} slots")
        try:
            if "split" in parts:
                state, _ = part_split(args, run, state, batches, teacher)
            if "tokens" in parts:
                part_tokens_per_s(args, root, run, state, batches, tokenizer)
            if "memory" in parts:
                part_memory(args)
        finally:
            run.checkpointer.close()
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average now {load_average()}")


if __name__ == "__main__":
    main()
