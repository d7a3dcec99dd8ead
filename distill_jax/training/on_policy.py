"""On-policy distillation (`kd.mode="on_policy"`): the student samples, the teacher
grades every token (GKD, Agarwal et al. 2024; Qwen3's strong-to-weak distillation;
Thinking Machines' on-policy distillation).

Each step t:
  1. the step's prompts (`prompts_for_step`: a fresh permutation of the prompt set
     per epoch, from the seed) are sampled n times each by the student's *current*
     params with our Sampler, which holds the training state's params in place
     (`Sampler.update_params`: no copy, no trip through the host) and draws with the
     keys of (seed, step) and each prompt's stable id;
  2. every sample becomes a row: prompt + completion, the loss on the completion
     tokens only. A sample that hit max_new_tokens is kept: each of its tokens still
     gets the teacher's signal;
  3. one jitted step (`Trainer.step` with the on-policy KDSettings) runs the teacher
     forward on the rows without gradient, computes the per-token loss of kd.kind on
     the sampled tokens chunk by chunk (`chunked_loss`), and updates the student.

So the samples of step t come from step t's params: nothing is overlapped or stale.
The sampler also returns its logprob of each token, and the step reports their
mean distance to its own forward pass (`logprob_gap`, ~1e-7 in f32): a nonzero
value would mean the samples came from other weights, or that decode and training
numerics disagree (bf16).

With `on_policy.off_policy_fraction` = f > 0, step t instead trains on a batch of
the curated traces (data.path) when floor((t+1)·f) > floor(t·f): GKD's mixture
with λ = 1 − f, deterministic in the step.

Reproducible and resumable: prompts and sampling keys are functions of (seed,
step), and the off-policy iterator's position is checkpointed, so a killed run
resumes to the same samples and the same losses, bitwise on CPU.

Several hosts: each host samples a contiguous part of the step's prompts (the
step's prompt count must divide over the hosts) and feeds its rows; the sampler's
calls are collective.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np

from distill_jax import models, sharding
from distill_jax.chat import ChatFormat
from distill_jax.data.prompts import Prompt, load_prompts_from_config
from distill_jax.sampling.generate import prompt_key, render_prompts
from distill_jax.sampling.params import SamplingParams
from distill_jax.sampling.sampler import Sampler
from distill_jax.tokenizer import Tokenizer

# The held-out prompts are sampled with the seed of this step (one no run reaches).
EVAL_SEED_STEP = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class PromptSet:
    """Prompts rendered with the student's chat template, checked against the row length."""
    path: str
    prompts: list[Prompt]
    token_ids: list[list[int]]
    keys: list[int]                 # the sampler's per-prompt seed: a hash of the id
    stop_token_ids: tuple[int, ...]  # the template's end of turn: where a sample stops

    def __len__(self) -> int:
        return len(self.prompts)


def prompt_sets(config, tokenizer: Tokenizer) -> tuple[PromptSet, PromptSet | None]:
    """The training prompts and the held-out ones (None without eval_prompts.path),
    rendered with the student's template; every on_policy setting is checked here,
    before anything loads."""
    oc, tc = config.on_policy, config.train
    checks = [
        (oc.n >= 1, f"on_policy.n must be >= 1, got {oc.n}"),
        (tc.batch_size % oc.n == 0, f"train.batch_size={tc.batch_size} must be a multiple "
                                    f"of on_policy.n={oc.n} (rows = prompts x samples)"),
        (oc.temperature > 0, f"on_policy.temperature must be > 0 (the estimators need the "
                             f"student's samples, not its argmax), got {oc.temperature}"),
        (0.0 <= oc.off_policy_fraction < 1.0, "on_policy.off_policy_fraction must be in "
                                              f"[0, 1), got {oc.off_policy_fraction}"),
        (oc.max_new_tokens >= 1, f"on_policy.max_new_tokens must be >= 1, got "
                                 f"{oc.max_new_tokens}"),
        (oc.eval_every >= 0, f"on_policy.eval_every must be >= 0, got {oc.eval_every}"),
        (config.kd.kind != "sampled_token" or (oc.temperature == 1.0 and oc.top_p == 1.0),
         "kd.kind='sampled_token' estimates the reverse KL from the student's own "
         "distribution: on_policy.temperature must be 1.0 and top_p 1.0, got "
         f"{oc.temperature} and {oc.top_p}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    per_step, hosts = tc.batch_size // oc.n, jax.process_count()
    if per_step % hosts:
        raise ValueError(f"{per_step} prompts per step (train.batch_size / on_policy.n) do not "
                         f"divide over {hosts} hosts, which sample them in equal parts")
    dc = config.data
    fmt = ChatFormat.create(tokenizer, dc.chat_template or None, dc.system_prompt or None,
                            assistant_prefix=oc.assistant_prefix)
    prompt_set = load_prompt_set(oc.prompts, fmt, dc.seq_len, oc.max_new_tokens)
    eval_set = (load_prompt_set(oc.eval_prompts, fmt, dc.seq_len, oc.max_new_tokens)
                if oc.eval_prompts.path else None)
    return prompt_set, eval_set


def check_slots(config, mesh) -> None:
    """The sampler's slots and the step's rows split evenly over the mesh's
    data-parallel shards (checked before the student loads)."""
    parallel = sharding.data_parallel_size(mesh)
    slots = config.on_policy.num_slots or config.train.batch_size
    if slots % parallel:
        raise ValueError(f"on_policy.num_slots={slots} (0 = train.batch_size) must be a "
                         f"multiple of the mesh's data x fsdp x expert size {parallel}: the "
                         "sampler splits its slots over them")


def check_teacher_scores_every_token(student: Tokenizer, teacher: Tokenizer) -> None:
    """The teacher scores the student's sampled ids as its own: every id the student
    can emit must be a token of the teacher's (the shared range is checked id by id
    by `kd_vocab.shared_kd_vocabulary`). Cross-tokenizer distillation is out of scope."""
    if student.vocab_size > teacher.vocab_size:
        first = teacher.vocab_size
        raise ValueError(
            f"on-policy distillation scores the student's tokens with the teacher, but the "
            f"student's tokenizer {student.name} has {student.vocab_size} ids and the "
            f"teacher's {teacher.name} {teacher.vocab_size}: the first token the teacher "
            f"lacks is id {first} ({student.id_to_token(first)!r}). Use a teacher with the "
            "student's tokenizer (cross-tokenizer distillation is not supported)")


def load_prompt_set(section, chat_format: ChatFormat, seq_len: int,
                    max_new_tokens: int) -> PromptSet:
    """Loads and renders a prompt section; refuses, before any weights load, a prompt
    whose rendering and `max_new_tokens` do not fit in a row of `seq_len` tokens."""
    if not section.path:
        raise ValueError("kd.mode='on_policy' needs on_policy.prompts.path: the prompts the "
                         "student answers (a JSONL in any distill-generate prompt format)")
    prompts = load_prompts_from_config(section)
    if not prompts:
        raise ValueError(f"{section.path}: no prompts")
    token_ids = render_prompts(prompts, chat_format, section.get("suffix"))
    budget = seq_len - max_new_tokens
    if budget < 1:
        raise ValueError(f"on_policy.max_new_tokens={max_new_tokens} leaves no room for a "
                         f"prompt in a row of data.seq_len={seq_len} tokens")
    for p, ids in zip(prompts, token_ids):
        if len(ids) > budget:
            raise ValueError(
                f"{section.path}: prompt {p.id!r} renders to {len(ids)} tokens, more than the "
                f"sampling budget of {budget} (data.seq_len={seq_len} minus "
                f"on_policy.max_new_tokens={max_new_tokens}); raise data.seq_len, lower "
                "max_new_tokens, or drop the prompt")
    return PromptSet(section.path, prompts, token_ids, [prompt_key(p.id) for p in prompts],
                     chat_format.stop_token_ids())


def prompts_for_step(num_prompts: int, per_step: int, step: int, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(indices, epochs) of the prompts of on-policy step `step` (0-based, counting
    on-policy steps only): consecutive slices of one permutation per epoch (epoch
    e's from (seed, e)); a step that crosses an epoch takes the rest of one
    permutation and the start of the next. A function of its arguments only, so a
    resumed run needs no iterator state."""
    first = step * per_step
    indices, epochs = [], []
    for g in range(first, first + per_step):
        epoch, k = divmod(g, num_prompts)
        indices.append(_permutation(num_prompts, seed, epoch)[k])
        epochs.append(epoch)
    return np.asarray(indices, np.int64), np.asarray(epochs, np.int64)


def sample_key(prompt_key: int, epoch: int) -> int:
    """The sampler's key of a prompt in an epoch: a prompt drawn twice in one step
    (the step crosses an epoch, or holds more prompts than there are) gets
    different samples."""
    return (prompt_key + epoch * 0x9E3779B1) & 0x7FFFFFFF


_PERMUTATIONS: dict[tuple[int, int, int], np.ndarray] = {}


def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    key = (n, seed, epoch)
    if key not in _PERMUTATIONS:
        if len(_PERMUTATIONS) > 4:
            _PERMUTATIONS.clear()
        _PERMUTATIONS[key] = np.random.default_rng([seed, epoch, 0x0F]).permutation(n)
    return _PERMUTATIONS[key]


def step_seed(seed: int, step: int) -> int:
    """The sampling seed of a step (32 bits of a SeedSequence of (seed, step))."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def rows_from_samples(prompt_ids: list[list[int]], samples: list[list[Any]], seq_len: int,
                      pad_id: int = 0) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Training rows from sampled completions: row i*n + j is prompt i + its sample j,
    left-aligned, `seq_len` inputs; the targets are the next tokens, masked to the
    completion; sample_logprobs holds the sampler's logprob of each completion target.
    -> (batch, host stats: mean completion length, fraction cut at the length limit)."""
    rows = [(p, s) for p, outs in zip(prompt_ids, samples) for s in outs]
    shape = (len(rows), seq_len)
    batch = {"inputs": np.full(shape, pad_id, np.int32),
             "targets": np.full(shape, pad_id, np.int32),
             "loss_mask": np.zeros(shape, np.float32), "segment_ids": np.zeros(shape, np.int32),
             "positions": np.zeros(shape, np.int32),
             "sample_logprobs": np.zeros(shape, np.float32)}
    lengths, truncated = [], 0
    for r, (prompt, sample) in enumerate(rows):
        tokens = list(prompt) + list(sample.token_ids)
        if len(tokens) - 1 > seq_len:
            raise ValueError(f"a prompt of {len(prompt)} tokens and a sample of "
                             f"{len(sample.token_ids)} exceed the row of {seq_len}")
        n = len(tokens) - 1
        batch["inputs"][r, :n] = tokens[:-1]
        batch["targets"][r, :n] = tokens[1:]
        batch["segment_ids"][r, :n] = 1
        batch["positions"][r, :n] = np.arange(n)
        first = len(prompt) - 1                      # the target that is sample token 0
        batch["loss_mask"][r, first:n] = 1.0
        batch["sample_logprobs"][r, first:n] = sample.logprobs
        lengths.append(len(sample.token_ids))
        truncated += sample.finish_reason == "length"
    stats = {"sample_length": float(np.mean(lengths)) if lengths else 0.0,
             "sample_truncated": truncated / max(len(rows), 1)}
    return batch, stats


def is_off_policy_step(step: int, fraction: float) -> bool:
    """Whether step `step` (0-based) trains on curated traces: `fraction` of the
    steps, spread evenly (floor((t+1)·f) > floor(t·f))."""
    return fraction > 0 and int((step + 1) * fraction) > int(step * fraction)


def on_policy_index(step: int, fraction: float) -> int:
    """How many on-policy steps come before step `step`: the prompts advance only on
    those, so off-policy steps skip no prompt."""
    return step - int(step * fraction)


def total_steps(on_policy_steps: int, fraction: float) -> int:
    """The fewest steps that hold `on_policy_steps` on-policy ones."""
    steps = on_policy_steps
    while on_policy_index(steps, fraction) < on_policy_steps:
        steps += 1
    return steps


class OnPolicyBatches:
    """The on-policy run's batches: `next(step, state)` samples step `step`'s rows
    from `state.params` (or takes an off-policy batch); `get_state`/`set_state`
    carry the off-policy iterator's position through checkpoints."""

    # The next batch needs the params of the step before: the loop waits for it.
    samples_from_state = True

    def __init__(self, config, cfg: models.ModelConfig, tokenizer: Tokenizer,
                 prompt_set: PromptSet, kd, params, mesh=None,
                 off_policy_iter=None, eval_set: PromptSet | None = None):
        oc = config.on_policy
        self.config, self.oc, self.kd = config, oc, kd
        self.prompt_set, self.eval_set = prompt_set, eval_set
        self.seq_len = config.data.seq_len
        self.pad_id = tokenizer.pad_id or 0
        self.off_policy_iter = off_policy_iter
        self.off_policy_kd = dataclasses.replace(
            kd, mode="online", kind="reverse_kl" if kd.kind == "sampled_token" else kd.kind)
        rows = config.train.batch_size
        self.prompts_per_step = rows // oc.n
        hosts = jax.process_count()
        self.host_prompts = self.prompts_per_step // hosts
        self.sampling = SamplingParams(
            n=oc.n, temperature=oc.temperature, top_p=oc.top_p,
            max_new_tokens=oc.max_new_tokens, stop_token_ids=prompt_set.stop_token_ids)
        self.sampler = Sampler(cfg, params, mesh=mesh, tokenizer=None,
                               num_slots=oc.num_slots or rows, pad_id=self.pad_id)

    def get_state(self) -> dict:
        if self.off_policy_iter is None:
            return {}
        return {"off_policy": self.off_policy_iter.get_state()}

    def set_state(self, state: dict) -> None:
        if self.off_policy_iter is not None and "off_policy" in state:
            self.off_policy_iter.set_state(state["off_policy"])

    def source_tokens(self, data_state: dict):
        return None

    def next(self, step: int, state) -> tuple[dict, Any, dict]:
        """(batch, its KDSettings, host metrics) of step `step` (0-based)."""
        if is_off_policy_step(step, self.oc.off_policy_fraction):
            return next(self.off_policy_iter), self.off_policy_kd, {"off_policy": 1.0}
        indices, epochs = prompts_for_step(
            len(self.prompt_set), self.prompts_per_step,
            on_policy_index(step, self.oc.off_policy_fraction), self.config.seed)
        mine = slice(jax.process_index() * self.host_prompts,
                     (jax.process_index() + 1) * self.host_prompts)
        batch, stats = self.sample(self.prompt_set, indices[mine], state.params,
                                   step_seed(self.config.seed, step), epochs[mine])
        stats["off_policy"] = 0.0
        return batch, self.kd, stats

    def sample(self, prompt_set: PromptSet, indices, params, seed: int, epochs=None
               ) -> tuple[dict, dict]:
        """Rows of `indices`' prompts (drawn in `epochs`, default 0) sampled by
        `params` -> (batch, host stats)."""
        start = time.perf_counter()
        self.sampler.update_params(params)
        prompt_ids = [prompt_set.token_ids[i] for i in indices]
        epochs = np.zeros(len(indices), np.int64) if epochs is None else epochs
        keys = [sample_key(prompt_set.keys[i], int(e)) for i, e in zip(indices, epochs)]
        outs = self.sampler.generate(prompt_ids, dataclasses.replace(self.sampling, seed=seed),
                                     prompt_keys=keys)
        batch, stats = rows_from_samples(prompt_ids, outs, self.seq_len, self.pad_id)
        seconds = time.perf_counter() - start
        tokens = self.sampler.stats.get("decode_tokens", 0) + len(indices) * self.sampling.n
        stats.update(sample_seconds=seconds, sample_tokens_per_s=tokens / max(seconds, 1e-9))
        return batch, stats

    def evaluate(self, trainer, params, teacher_params) -> dict[str, float]:
        """Held-out metrics (eval/*): the student samples the eval prompts (one fixed
        seed: the same draws at every evaluation of the same params) and the teacher
        scores them, without training. Every host evaluates its share of the prompts;
        the means are over all of them."""
        if self.eval_set is None:
            return {}
        n = len(self.eval_set)
        hosts, host = jax.process_count(), jax.process_index()
        per_host = -(-n // hosts)
        mine = list(range(n))[host * per_host:(host + 1) * per_host]
        out: dict[str, float] = {}
        for lo in range(0, per_host, self.host_prompts):
            chunk = mine[lo:lo + self.host_prompts]
            # Every batch has the step's shape (one compiled program); padding rows
            # repeat the first prompt and are masked out of the means by weight.
            padded = chunk + [mine[0] if mine else 0] * (self.host_prompts - len(chunk))
            batch, _ = self.sample(self.eval_set, padded, params,
                                       step_seed(self.config.seed, EVAL_SEED_STEP))
            keep = np.repeat(np.arange(len(padded)) < len(chunk), self.oc.n)
            batch["loss_mask"] = batch["loss_mask"] * keep[:, None]
            metrics = jax.device_get(trainer.score(params, batch, teacher_params, self.kd))
            weight = float(metrics["target_tokens"])
            for k in ("reverse_kl", "teacher_logprob", "student_logprob"):
                out[k] = out.get(k, 0.0) + float(metrics[k]) * weight
            out["tokens"] = out.get("tokens", 0.0) + weight
        total = max(out.pop("tokens", 0.0), 1.0)
        return {f"eval/{k}": v / total for k, v in out.items()}
