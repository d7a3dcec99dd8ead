"""On-policy distillation (kd.mode="on_policy"): the per-token loss against numpy,
where gradients go, the step's samples come from the step's params, the run is
reproducible and resumes bitwise, a 2-device mesh equals one device, bad input."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import sft_tiny_cpu
from distill_jax import models
from distill_jax.demo import arithmetic
from distill_jax.sampling.outputs import SampleOutput
from distill_jax.sampling.params import SamplingParams
from distill_jax.sampling.sampler import Sampler, engine_compiles
from distill_jax.tokenizer import train_sentencepiece
from distill_jax.training import chunked_loss, losses, on_policy
from distill_jax.training.run import train
from tests.compile_cache import compile_cache_env
from tests.training.kill_after_step import train_cli
from tests.overrides import apply_overrides
from tests.training.conftest import write_traces

KINDS = ("reverse_kl", "forward_kl", "jsd", "sampled_token")


# ------------------------------------------------------------ the loss, in numpy

def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _kl(log_a, log_b):
    return (np.exp(log_a) * (log_a - log_b)).sum(-1)


def numpy_terms(student, teacher, targets, kind, beta=0.3, temperature=1.0):
    """Per-token values and d(sum of loss * w)/d(student logits), written out by hand:
    the student's logits are cut to the teacher's (shared) ids for every divergence,
    its whole vocabulary is what it sampled from."""
    shared = teacher.shape[-1]
    student = student.astype(np.float64)
    teacher = teacher.astype(np.float64)
    log_q_all = _log_softmax(student)
    log_q = _log_softmax(student[..., :shared] / temperature)
    log_p = _log_softmax(teacher / temperature)
    q, p = np.exp(log_q), np.exp(log_p)
    lp_s = np.take_along_axis(log_q_all, targets[..., None], -1)[..., 0]
    lp_t = np.take_along_axis(_log_softmax(teacher), targets[..., None], -1)[..., 0]
    t2 = temperature ** 2
    grad = np.zeros_like(student)
    if kind == "sampled_token":
        advantage = lp_t - lp_s
        loss = -advantage
        onehot = np.eye(student.shape[-1])[targets]
        grad = -advantage[..., None] * (onehot - np.exp(log_q_all))
    elif kind == "reverse_kl":
        kl = _kl(log_q, log_p)
        loss = kl * t2
        grad[..., :shared] = q * (log_q - log_p - kl[..., None]) * temperature
    elif kind == "forward_kl":
        loss = _kl(log_p, log_q) * t2
        grad[..., :shared] = (q - p) * temperature
    else:
        log_m = np.log(beta * p + (1 - beta) * q)
        loss = (beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)) * t2
        grad = None                                  # checked against jax.grad only
    return {"loss": loss, "reverse_kl": _kl(_log_softmax(student[..., :shared]),
                                            _log_softmax(teacher)),
            "teacher_logprob": lp_t, "student_logprob": lp_s}, grad


@pytest.mark.parametrize("kind", KINDS)
def test_per_token_loss_and_its_gradient_equal_a_numpy_reference(kind):
    rng = np.random.default_rng(0)
    V, shared = 11, 9                    # the student's last 2 ids are padding the teacher lacks
    student = rng.normal(size=(2, 5, V)).astype(np.float32) * 2
    teacher = rng.normal(size=(2, 5, shared)).astype(np.float32) * 2
    targets = rng.integers(0, shared, (2, 5))
    weights = rng.uniform(0.5, 1.5, (2, 5)).astype(np.float32)
    temperature = 1.0 if kind == "sampled_token" else 1.7
    terms = losses.on_policy_token_terms(jnp.asarray(student), jnp.asarray(teacher),
                                         jnp.asarray(targets), temperature, kind, 0.3)
    want, want_grad = numpy_terms(student, teacher, targets, kind, 0.3, temperature)
    for key in want:
        np.testing.assert_allclose(np.asarray(terms[key]), want[key], rtol=2e-5, atol=2e-6,
                                   err_msg=key)

    def total(s, t):
        out = losses.on_policy_token_terms(s, jax.lax.stop_gradient(t), jnp.asarray(targets),
                                           temperature, kind, 0.3)
        return jnp.sum(out["loss"] * weights)
    g_student, g_teacher = jax.grad(total, argnums=(0, 1))(jnp.asarray(student),
                                                           jnp.asarray(teacher))
    assert not np.any(np.asarray(g_teacher))           # the teacher is a constant
    if want_grad is not None:
        np.testing.assert_allclose(np.asarray(g_student), want_grad * weights[..., None],
                                   rtol=2e-5, atol=2e-6)
    else:                                                # jsd: finite differences
        eps, (i, j, k) = 1e-3, (1, 2, 3)
        bumped = student.copy()
        bumped[i, j, k] += eps
        lo = student.copy()
        lo[i, j, k] -= eps
        numeric = (float(total(jnp.asarray(bumped), jnp.asarray(teacher)))
                   - float(total(jnp.asarray(lo), jnp.asarray(teacher)))) / (2 * eps)
        assert float(g_student[i, j, k]) == pytest.approx(numeric, rel=2e-2, abs=1e-4)


class OnPolicyKD:                       # duck-types trainer.KDSettings
    mode, temperature, beta = "on_policy", 1.0, 0.5

    def __init__(self, kind):
        self.kind = kind


@pytest.mark.parametrize("kind", ["reverse_kl", "sampled_token"])
def test_chunked_sums_equal_the_unchunked_terms_and_never_train_the_teacher(kind):
    rng = np.random.default_rng(1)
    B, L, D, V, shared = 2, 13, 8, 40, 37
    hidden = jnp.asarray(rng.normal(size=(B, L, D)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(D, V)) * 0.5, jnp.float32)
    t_hidden = jnp.asarray(rng.normal(size=(B, L, D)), jnp.float32)
    t_kernel = jnp.asarray(rng.normal(size=(D, V + 3)) * 0.5, jnp.float32)
    targets = jnp.asarray(rng.integers(0, V, (B, L)))        # some >= shared: unscored
    mask = jnp.asarray(rng.uniform(size=(B, L)) > 0.3, jnp.float32)
    sample_lp = jnp.asarray(rng.normal(size=(B, L)), jnp.float32)
    kd = OnPolicyKD(kind)

    def reference(h, w, th, tw):
        logits = jnp.einsum("bld,dv->blv", h, w)
        teacher = jax.lax.stop_gradient(jnp.einsum("bld,dv->blv", th, tw))[..., :shared]
        scored = (mask > 0) & (targets < shared)
        terms = losses.on_policy_token_terms(logits, teacher, jnp.where(scored, targets, 0),
                                             1.0, kind)
        # CE of the student's own samples is a metric here: no gradient.
        ce = losses.token_cross_entropy(jax.lax.stop_gradient(logits), targets)
        # The sampled-token loss needs the teacher's probability of the sampled id; a
        # full-vocabulary divergence does not, and keeps ids past the shared ones.
        loss_at = scored if kind == "sampled_token" else mask > 0
        return {"kd_sum": jnp.sum(jnp.where(loss_at, terms["loss"] * mask, 0)),
                "reverse_kl_sum": jnp.sum(jnp.where(mask > 0, terms["reverse_kl"] * mask, 0)),
                "teacher_logprob_sum": jnp.sum(jnp.where(scored, terms["teacher_logprob"], 0)),
                "unscored_tokens": jnp.sum((mask > 0) & (targets >= shared)),
                "logprob_gap_sum": jnp.sum(jnp.abs(-ce - sample_lp) * mask),
                "ce_sum": jnp.sum(ce * mask)}

    def chunked(h, w, th, tw, chunk):
        return chunked_loss.chunked_loss_sums(
            h, w, targets, mask, chunk_size=chunk, kd=kd, teacher_hidden=th,
            teacher_head_kernel=tw, kd_vocab_size=shared, sample_logprobs=sample_lp)

    want = reference(hidden, kernel, t_hidden, t_kernel)
    assert float(want["unscored_tokens"]) > 0
    objective = lambda sums: sums["kd_sum"] + 0.1 * sums["ce_sum"]   # noqa: E731
    want_grads = jax.grad(lambda *a: objective(reference(*a)), argnums=(0, 1, 2, 3))(
        hidden, kernel, t_hidden, t_kernel)
    for chunk in (0, 4, 5):
        got = chunked(hidden, kernel, t_hidden, t_kernel, chunk)
        for key, value in want.items():
            np.testing.assert_allclose(float(got[key]), float(value), rtol=1e-5, atol=1e-5,
                                       err_msg=f"{key} chunk {chunk}")
        grads = jax.grad(lambda *a: objective(chunked(*a, chunk)), argnums=(0, 1, 2, 3))(
            hidden, kernel, t_hidden, t_kernel)
        for got_g, want_g in zip(grads[:2], want_grads[:2]):
            np.testing.assert_allclose(np.asarray(got_g), np.asarray(want_g), rtol=1e-4,
                                       atol=1e-5)
        assert not np.any(np.asarray(grads[2])) and not np.any(np.asarray(grads[3]))


# ------------------------------------------------------------ prompts and rows

def test_prompts_of_a_step_are_a_function_of_seed_and_step():
    n, per_step = 10, 4
    steps = [on_policy.prompts_for_step(n, per_step, t, seed=3) for t in range(5)]
    flat = np.concatenate([indices for indices, _ in steps])
    # Each epoch is a permutation: the first 10 and the next 10 indices cover all prompts.
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert not np.array_equal(flat[:10], flat[10:20])           # a new order per epoch
    np.testing.assert_array_equal(np.concatenate([e for _, e in steps]), np.arange(20) // 10)
    np.testing.assert_array_equal(on_policy.prompts_for_step(n, per_step, 3, seed=3)[0],
                                  steps[3][0])
    assert not np.array_equal(on_policy.prompts_for_step(n, per_step, 3, seed=4)[0], steps[3][0])
    assert on_policy.step_seed(0, 1) != on_policy.step_seed(0, 2)
    # A prompt drawn in two epochs of one step samples under two keys.
    assert on_policy.sample_key(12345, 0) != on_policy.sample_key(12345, 1)


def test_off_policy_steps_are_spread_evenly_and_skip_no_prompt():
    assert [on_policy.is_off_policy_step(t, 0.25) for t in range(8)] == \
        [False, False, False, True] * 2
    assert not any(on_policy.is_off_policy_step(t, 0.0) for t in range(8))
    f = 0.5
    on = [on_policy.on_policy_index(t, f) for t in range(8)
          if not on_policy.is_off_policy_step(t, f)]
    assert on == [0, 1, 2, 3]                  # consecutive: every prompt slice is used
    # Steps 0..6 hold 4 on-policy ones (0, 2, 4, 6); with f = 0.25, step 3 is the
    # first off-policy one.
    assert on_policy.total_steps(4, f) == 7 and on_policy.total_steps(4, 0.0) == 4
    assert on_policy.total_steps(3, 0.25) == 3 and on_policy.total_steps(4, 0.25) == 5


def test_rows_hold_prompt_and_completion_with_the_loss_on_the_completion():
    samples = [[SampleOutput([7, 8, 2], [-0.1, -0.2, -0.3], "stop"),
                SampleOutput([9, 9, 9, 9], [-1.0] * 4, "length")]]
    batch, stats = on_policy.rows_from_samples([[1, 5, 6]], samples, seq_len=8, pad_id=0)
    np.testing.assert_array_equal(batch["inputs"][0], [1, 5, 6, 7, 8, 0, 0, 0])
    np.testing.assert_array_equal(batch["targets"][0], [5, 6, 7, 8, 2, 0, 0, 0])
    np.testing.assert_array_equal(batch["loss_mask"][0], [0, 0, 1, 1, 1, 0, 0, 0])
    np.testing.assert_allclose(batch["sample_logprobs"][0, 2:5], [-0.1, -0.2, -0.3])
    np.testing.assert_array_equal(batch["segment_ids"][1], [1] * 6 + [0, 0])
    np.testing.assert_array_equal(batch["loss_mask"][1], [0, 0] + [1] * 4 + [0, 0])
    assert stats == {"sample_length": 3.5, "sample_truncated": 0.5}


# ------------------------------------------------------------ the sampler follows the params

def test_update_params_samples_from_the_new_weights_without_recompiling():
    cfg = models.get_config("tiny-llama", vocab_size=64)
    a = models.init_params(cfg, jax.random.key(0))
    b = models.init_params(cfg, jax.random.key(1))
    sp = SamplingParams(n=2, temperature=1.0, max_new_tokens=6, seed=5)
    prompts = [[1, 2, 3], [4, 5]]
    sampler = Sampler(cfg, a, num_slots=4)
    from_a = sampler.generate(prompts, sp)
    compiles = engine_compiles()
    sampler.update_params(b)
    from_b = sampler.generate(prompts, sp)
    assert engine_compiles() == compiles
    fresh = Sampler(cfg, b, num_slots=4).generate(prompts, sp)
    # (Random tiny models are near uniform: the same keys often draw the same tokens,
    # so the logprobs tell the weights apart.)
    draws = lambda outs: [[(s.token_ids, s.logprobs) for s in o] for o in outs]  # noqa: E731
    assert draws(from_b) == draws(fresh) and draws(from_b) != draws(from_a)


def test_update_params_takes_placed_params_in_place_on_a_mesh():
    """A training state's params, already placed by the same logical rules, are
    neither copied nor moved: the sampler holds the very same arrays."""
    from distill_jax import sharding
    cfg = models.get_config("tiny-llama", vocab_size=64)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    shardings = sharding.logical_to_shardings(models.param_logical_axes(cfg), mesh,
                                              shapes=models.param_shapes(cfg))
    placed = jax.device_put(models.init_params(cfg, jax.random.key(0)), shardings)
    sampler = Sampler(cfg, placed, mesh=mesh, num_slots=4)
    other = jax.device_put(models.init_params(cfg, jax.random.key(1)), shardings)
    sampler.update_params(other)
    for held, given in zip(jax.tree_util.tree_leaves(sampler.params),
                           jax.tree_util.tree_leaves(other)):
        assert held is given


# ------------------------------------------------------------ runs

@pytest.fixture(scope="module")
def prompts_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    with open(path, "w") as f:
        for k, p in enumerate(arithmetic.make_split(0, 0, 24)):
            f.write(json.dumps({"id": f"p{k}", "problem": p.question,
                                "answer": str(p.answer)}) + "\n")
    return path


RUN = {"data.chat_template": "chatml", "data.seq_len": 128, "kd.mode": "on_policy",
       "kd.kind": "reverse_kl", "kd.teacher.preset": "tiny-llama", "kd.teacher.init_seed": 1,
       "kd.teacher.dtype": "float32", "kd.teacher.param_dtype": "float32",
       "on_policy.prompts.suffix": "", "on_policy.eval_prompts.suffix": "",
       "on_policy.eval_prompts.limit": 4, "on_policy.max_new_tokens": 24, "on_policy.n": 2,
       "on_policy.eval_every": 2, "train.batch_size": 4, "train.num_steps": 4,
       "train.learning_rate": 3e-3, "train.checkpoint_every": 2, "train.tensorboard": False}


def _config(workdir, tokenizer_path, prompts_path, **overrides):
    c = sft_tiny_cpu.get_config()
    c.workdir = str(workdir)
    c.data.tokenizer_path = str(tokenizer_path)
    c.on_policy.prompts.path = c.on_policy.eval_prompts.path = str(prompts_path)
    c.mesh = None                    # one device (of the 8 the test process has)
    return apply_overrides(c, {**RUN, **overrides})


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory, tokenizer_path, prompts_path):
    workdir = tmp_path_factory.mktemp("one_device") / "run"
    summary = train(_config(workdir, tokenizer_path, prompts_path))
    return workdir, summary


def test_a_run_samples_from_each_steps_params_and_reports_held_out_kl(one_device_run):
    workdir, summary = one_device_run
    rows = _rows(workdir)
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for r in steps:
        # The sampler's logprobs are this step's forward pass's: the samples came from
        # the params being updated (a stale sampler is caught below).
        assert r["logprob_gap"] < 1e-5, r
        assert r["loss"] == r["kd"] == r["reverse_kl"] > 0
        assert r["teacher_logprob"] < 0 and r["student_logprob"] < 0
        assert 0 < r["sample_length"] <= 24 and 0 <= r["sample_truncated"] <= 1
        assert r["sample_seconds"] > 0 and r["step_seconds"] > 0
        assert r["target_tokens"] == pytest.approx(4 * r["sample_length"])
    held_out = [r for r in rows if "eval/reverse_kl" in r]
    assert [r["step"] for r in held_out] == [0, 2, 4]
    assert summary["on_policy"]["held_out"]["eval/reverse_kl"] == held_out[-1]["eval/reverse_kl"]
    assert summary["on_policy"]["prompts_per_step"] == 2 and summary["data"] is None


def test_samples_from_other_params_show_in_the_logprob_gap(one_device_run, tokenizer_path,
                                                            prompts_path, tmp_path):
    """The step's `logprob_gap` is what proves freshness: scored with the params one
    update later, the same samples are ~1e-3 off instead of ~1e-7."""
    from distill_jax.training import run as run_lib
    c = _config(tmp_path / "run", tokenizer_path, prompts_path, **{"train.warmup_steps": 0})
    run = run_lib.prepare(c)
    state, batches, _ = run_lib.resume_or_init(run)
    teacher = run_lib.load_teacher(run)
    batch, kd, _ = batches.next(0, state)
    fresh = run.trainer.score(state.params, batch, teacher, kd)
    later, _ = run.trainer.step(jax.tree_util.tree_map(jnp.copy, state), batch, teacher, kd)
    stale = run.trainer.score(later.params, batch, teacher, kd)
    assert float(fresh["logprob_gap"]) < 1e-5 < 1e-3 < float(stale["logprob_gap"])


TIMING = ("sample_seconds", "step_seconds", "sample_tokens_per_s", "tokens_per_s")


def _without_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_the_same_seed_gives_the_same_samples_and_losses(one_device_run, tmp_path,
                                                          tokenizer_path, prompts_path):
    workdir, _ = one_device_run
    again = _config(tmp_path / "again", tokenizer_path, prompts_path)
    train(again)
    assert _without_timing(_rows(again.workdir)) == _without_timing(_rows(workdir))  # bitwise
    # Step 1's row is all the other seed needs: its samples and loss come before
    # any update.
    other = _config(tmp_path / "other", tokenizer_path, prompts_path, seed=1,
                    **{"train.num_steps": 1})
    train(other)
    assert _rows(other.workdir)[1]["reverse_kl"] != _rows(workdir)[1]["reverse_kl"]


def _cli_overrides(tokenizer_path, prompts_path, **extra):
    return {**RUN, "data.tokenizer_path": tokenizer_path, "on_policy.prompts.path": prompts_path,
            "on_policy.eval_prompts.path": prompts_path, **extra}


def _devices(count):
    return {"XLA_FLAGS": f"--xla_force_host_platform_device_count={count}"}


@pytest.fixture(scope="module")
def two_device_run(tmp_path_factory, tokenizer_path, prompts_path):
    """RUN through the CLI on a 2-device (fsdp) mesh, in its own process, with a
    compilation cache that the kill-and-resume test's processes (the same config)
    load from: (work directory, overrides, environment)."""
    root = tmp_path_factory.mktemp("two_device")
    common = _cli_overrides(tokenizer_path, prompts_path, **{
        "mesh.data": 1, "mesh.fsdp": 2, "mesh.tensor": 1})
    env = dict(compile_cache_env(root / "jax_cache"), **_devices(2))
    train_cli({**common, "workdir": root / "mesh"}, env)
    return root / "mesh", common, env


def test_a_two_device_mesh_samples_and_trains_like_one_device(one_device_run, two_device_run):
    workdir, _ = one_device_run
    mesh_workdir, _, _ = two_device_run
    got, want = _without_timing(_rows(mesh_workdir)), _without_timing(_rows(workdir))
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for key in ("sample_length", "sample_truncated", "target_tokens", "tokens"):
            if key in w:
                assert g[key] == w[key], (key, g, w)     # the same tokens were sampled
        for key, value in w.items():
            assert g[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (key, g, w)


@pytest.mark.slow
def test_kill_and_resume_continues_bitwise(tmp_path, two_device_run):
    # The uninterrupted run is the 2-device one (4 steps, checkpoints at 2 and 4):
    # killed after step 3, the run resumes from step 2 on the same sharded mesh.
    straight_workdir, common, env = two_device_run
    killed = train_cli({**common, "workdir": tmp_path / "resumed"}, env, check=False,
                        kill_after_step=3)
    assert killed.returncode == -9
    resumed = train_cli({**common, "workdir": tmp_path / "resumed"}, env)
    assert "resumed from step 2" in resumed.stdout
    straight = _without_timing(_rows(straight_workdir))
    assert [r["step"] for r in straight if "loss" in r] == list(range(1, 5))
    assert _without_timing(_rows(tmp_path / "resumed")) == straight


def test_off_policy_steps_mix_in_curated_traces(tmp_path, tokenizer_path, prompts_path):
    write_traces(tmp_path / "t.jsonl", 16)
    c = _config(tmp_path / "run", tokenizer_path, prompts_path, **{
        "on_policy.off_policy_fraction": 0.5, "data.path": str(tmp_path / "t.jsonl"),
        "kd.alpha": 1.0, "on_policy.eval_prompts.path": ""})
    train(c)
    rows = _rows(c.workdir)
    assert [r["off_policy"] for r in rows] == [0.0, 1.0, 0.0, 1.0]
    for r in rows:
        assert ("reverse_kl" in r) == (r["off_policy"] == 0.0)   # on-policy metrics only
        assert r["loss"] == pytest.approx(r["kd"])               # alpha 1: the divergence alone


# ------------------------------------------------------------ bad input

def test_a_teacher_with_another_tokenizer_is_refused_naming_the_first_differing_token(
        tmp_path, tokenizer_path, prompts_path, tokenizer):
    # Same size, other pieces: trained on the demo's text written backwards.
    corpus = [(p.question + "\n" + p.solution)[::-1] for p in arithmetic.make_split(0, 0, 500)]
    other = train_sentencepiece(corpus, str(tmp_path / "other"), vocab_size=tokenizer.vocab_size)
    c = _config(tmp_path / "run", tokenizer_path, prompts_path,
                **{"kd.teacher.tokenizer_path": other})
    with pytest.raises(ValueError, match=r"first differ at id \d+: the student's .* has '.*', "
                                         r"the teacher's .* has '.*'"):
        train(c)
    assert not os.path.exists(os.path.join(c.workdir, "checkpoints"))


def test_a_student_vocabulary_the_teacher_lacks_is_refused(tokenizer):
    smaller = type("Small", (), {"vocab_size": tokenizer.vocab_size - 10, "name": "small"})()
    with pytest.raises(ValueError, match=rf"first token the teacher lacks is id "
                                         rf"{tokenizer.vocab_size - 10} "):
        on_policy.check_teacher_scores_every_token(tokenizer, smaller)


def test_a_prompt_longer_than_the_sampling_budget_is_named(tmp_path, tokenizer_path,
                                                           prompts_path):
    c = _config(tmp_path / "run", tokenizer_path, prompts_path,
                **{"on_policy.max_new_tokens": 112})
    with pytest.raises(ValueError, match=r"prompts.jsonl: prompt 'p\d+' renders to \d+ tokens, "
                                         r"more than the sampling budget of 16 \(data.seq_len="
                                         r"128 minus on_policy.max_new_tokens=112\)"):
        train(c)


@pytest.mark.parametrize("overrides,message", [
    ({"on_policy.n": 3}, "multiple of on_policy.n=3"),
    ({"on_policy.temperature": 0.0}, "temperature must be > 0"),
    ({"on_policy.off_policy_fraction": 1.0}, r"off_policy_fraction must be in \[0, 1\)"),
    ({"on_policy.prompts.path": ""}, "needs on_policy.prompts.path"),
    ({"kd.kind": "sampled_token", "kd.temperature": 2.0}, "scores the sampled tokens at T = 1"),
])
def test_bad_settings_are_refused_before_anything_loads(tmp_path, tokenizer_path, prompts_path,
                                                        overrides, message):
    with pytest.raises(ValueError, match=message):
        train(_config(tmp_path / "run", tokenizer_path, prompts_path, **overrides))


def test_the_memory_plan_counts_the_students_sampling_between_steps():
    """The example config on 8 x 80 GB GPUs (presets, no checkpoint): 64 slots of
    1024 + 8192 positions fit inside the step's own transients; 1024 slots add their
    excess; 4096 do not fit, and the refusal says the sampling is what does not."""
    from distill_jax import planning
    from tests.config_files import load_config_module
    module = load_config_module("on_policy_r1_distill_qwen_1p5b")

    def plan(slots):
        c = module.get_config()
        c.model.checkpoint, c.model.preset = "", "deepseek-r1-distill-qwen-1.5b"
        c.kd.teacher.checkpoint, c.kd.teacher.preset = "", "qwen2.5-math-7b"
        c.data.tokenizer_path = ""
        c.on_policy.num_slots = slots
        return planning.plan_from_config(c, 8, int(79.6 * planning.GIB), backend="gpu")

    small, large = plan(64), plan(1024)
    assert small.terms["sampling"] == 0 and small.fits
    assert large.terms["sampling"] > 10 * planning.GIB and large.fits
    assert large.total - small.total == large.terms["sampling"]
    with pytest.raises(planning.PlanError, match="on-policy training does not fit: the step "
                                                 "and the student's sampling share the device"):
        plan(4096)
