"""chunked_loss_sums against the trainer's unchunked sums on full logits."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.training import chunked_loss, losses

B, L, D, V = 2, 13, 16, 50
CHUNKS = [0, 4, 5, 13, -1]          # 4 and 5 do not divide L = 13; the rest are one chunk


@dataclasses.dataclass(frozen=True)
class KD:                            # duck-types trainer.KDSettings
    mode: str = "none"
    temperature: float = 2.0
    kind: str = "forward_kl"
    beta: float = 0.3


def full_logits(hidden, kernel, dtype=jnp.float32, layout="dv"):
    x = hidden.reshape(-1, hidden.shape[-1]).astype(dtype)
    if layout == "vd":
        out = jnp.einsum("nd,vd->nv", x, kernel.astype(dtype), preferred_element_type=jnp.float32)
    else:
        out = jnp.dot(x, kernel.astype(dtype), preferred_element_type=jnp.float32)
    return out.reshape(*hidden.shape[:2], -1)


def reference_sums(hidden, kernel, targets, mask, kd=None, teacher_hidden=None,
                   teacher_kernel=None, kd_vocab_size=None, topk_ids=None, topk_logprobs=None,
                   kd_mask=None):
    """Trainer._sums, on full logits."""
    logits = full_logits(hidden, kernel)
    ce = losses.token_cross_entropy(logits, targets)
    hit = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    sums = {"ce_sum": jnp.sum(ce * mask), "correct": jnp.sum(hit * mask)}
    if kd is not None and kd.mode == "online":
        teacher_logits = jax.lax.stop_gradient(full_logits(teacher_hidden, teacher_kernel))
        per = losses.kd_token_loss(logits[..., :kd_vocab_size], teacher_logits[..., :kd_vocab_size],
                                   kd.temperature, kd.kind, kd.beta)
        sums["kd_sum"] = jnp.sum(per * mask)
    elif kd is not None and kd.mode == "offline":
        per = losses.topk_kd_token_loss(logits, topk_ids, topk_logprobs, kd.temperature)
        sums["kd_sum"] = jnp.sum(jnp.where(mask * kd_mask > 0, per, 0.0))
    return sums


def objective(sums):
    """Weights every differentiable sum differently, so each one's gradient counts."""
    return 0.3 * sums["ce_sum"] + 0.7 * sums.get("kd_sum", 0.0)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(B, L, D)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(D, V)) * 0.5, jnp.float32)
    targets = rng.integers(0, V, (B, L))
    # Half the targets are the argmax, so `correct` counts real hits.
    argmax = np.asarray(jnp.argmax(full_logits(hidden, kernel), -1))
    targets = np.where(rng.random((B, L)) < 0.5, argmax, targets)
    mask = np.ones((B, L), np.float32)
    mask[0, :5] = 0                   # a prompt
    mask[1, :2] = 0
    mask[1, 10:] = 0                  # padding
    mask[0, 8] = 0
    return hidden, kernel, jnp.asarray(targets, jnp.int32), jnp.asarray(mask)


def assert_close(got, want, rtol=1e-5, atol=1e-5):
    jax.tree_util.tree_map(
        lambda g, w: np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol,
                                                atol=atol), got, want)


def check(data, chunk_size, **kw):
    """Values and gradients (w.r.t. hidden and kernel) of chunked vs reference."""
    hidden, kernel, targets, mask = data
    ref_kw = {k: v for k, v in kw.items() if k not in ("teacher_head_kernel",)}
    if "teacher_head_kernel" in kw:
        ref_kw["teacher_kernel"] = kw["teacher_head_kernel"]

    def chunked(h, w):
        return chunked_loss.chunked_loss_sums(h, w, targets, mask, chunk_size=chunk_size, **kw)

    def reference(h, w):
        return reference_sums(h, w, targets, mask, **ref_kw)

    got, want = jax.jit(chunked)(hidden, kernel), jax.jit(reference)(hidden, kernel)
    assert set(got) == set(want)
    assert_close(got, want)
    assert float(want["correct"]) > 0
    grad_got = jax.jit(jax.grad(lambda h, w: objective(chunked(h, w)), (0, 1)))(hidden, kernel)
    grad_want = jax.jit(jax.grad(lambda h, w: objective(reference(h, w)), (0, 1)))(hidden,
                                                                                  kernel)
    assert float(jnp.abs(grad_want[0]).max()) > 0
    assert_close(grad_got, grad_want)
    return got


@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_ce_and_correct_match_unchunked(data, chunk_size):
    check(data, chunk_size)


def test_tied_layout_and_bf16_match_the_model_head(data):
    """layout "vd" takes an embedding table [V, D] as the model's tied head does; in bf16
    the chunks give the model's bf16 logits."""
    hidden, kernel, targets, mask = data
    table = kernel.T
    h16 = hidden.astype(jnp.bfloat16)
    got = chunked_loss.chunked_loss_sums(h16, table, targets, mask, chunk_size=4,
                                         compute_dtype=jnp.bfloat16, head_layout="vd")
    logits = full_logits(h16, table, jnp.bfloat16, layout="vd")
    want = jnp.sum(losses.token_cross_entropy(logits, targets) * mask)
    np.testing.assert_allclose(float(got["ce_sum"]), float(want), rtol=1e-5)
    grads = jax.jit(jax.grad(lambda w: chunked_loss.chunked_loss_sums(
        h16, w, targets, mask, chunk_size=4, compute_dtype=jnp.bfloat16,
        head_layout="vd")["ce_sum"]))(table)
    assert grads.dtype == jnp.float32 and grads.shape == (V, D)   # accumulated in f32


@pytest.mark.parametrize("kind,chunk_size", [("forward_kl", 4), ("reverse_kl", 5), ("jsd", 4),
                                             ("jsd", 0)])
def test_online_kd_matches_unchunked(data, kind, chunk_size):
    """A teacher with a wider hidden size and a larger vocabulary, cut to 45 shared ids."""
    rng = np.random.default_rng(1)
    teacher_hidden = jnp.asarray(rng.normal(size=(B, L, 24)), jnp.float32)
    teacher_kernel = jnp.asarray(rng.normal(size=(24, 60)) * 0.5, jnp.float32)
    got = check(data, chunk_size, kd=KD("online", temperature=2.0, kind=kind, beta=0.3),
                teacher_hidden=teacher_hidden, teacher_head_kernel=teacher_kernel,
                kd_vocab_size=45)
    assert float(got["kd_sum"]) > 0


def offline_inputs(seed=2, k=5):
    rng = np.random.default_rng(seed)
    topk_ids = rng.integers(0, V, (B, L, k))
    logprobs = np.sort(-rng.random((B, L, k)) * 3, axis=-1)[..., ::-1].copy()
    logprobs[0, 6, 3:] = -np.inf      # unused slots
    logprobs[1, 4, 1:] = -np.inf
    logprobs[1, 7, :] = -np.inf       # no teacher entries: kd_mask is 0 there
    kd_mask = np.ones((B, L), np.float32)
    kd_mask[1, 7] = 0
    kd_mask[0, 10] = 0
    return (jnp.asarray(topk_ids, jnp.int32), jnp.asarray(logprobs, jnp.float32),
            jnp.asarray(kd_mask))


@pytest.mark.parametrize("chunk_size", [4, 0])
def test_offline_topk_kd_matches_unchunked(data, chunk_size):
    topk_ids, logprobs, kd_mask = offline_inputs()
    got = check(data, chunk_size, kd=KD("offline", temperature=1.5), topk_ids=topk_ids,
                topk_logprobs=logprobs, kd_mask=kd_mask)
    assert float(got["kd_sum"]) > 0


def count_computed_chunks(monkeypatch):
    """Wraps _chunk_sums with a host callback: one entry per chunk actually computed."""
    calls = []
    original = chunked_loss._chunk_sums

    def counted(chunk, *args, **kwargs):
        jax.debug.callback(lambda: calls.append(1))
        return original(chunk, *args, **kwargs)
    monkeypatch.setattr(chunked_loss, "_chunk_sums", counted)
    return calls


def test_chunks_of_masked_tokens_are_not_computed(data, monkeypatch):
    hidden, kernel, targets, _ = data
    mask = np.zeros((B, L), np.float32)
    mask[0, 9:12] = 1                 # 3 tokens
    mask[1, 1:7] = 1                  # 6 tokens: the longest row fills 2 chunks of 4, of 4
    mask = jnp.asarray(mask)
    calls = count_computed_chunks(monkeypatch)

    def chunked(h, w):
        return chunked_loss.chunked_loss_sums(h, w, targets, mask, chunk_size=4)

    got = jax.block_until_ready(jax.jit(chunked)(hidden, kernel))
    jax.effects_barrier()
    assert len(calls) == 2
    assert_close(got, reference_sums(hidden, kernel, targets, mask))

    calls.clear()
    grads = jax.block_until_ready(
        jax.jit(jax.grad(lambda h, w: chunked(h, w)["ce_sum"], (0, 1)))(hidden, kernel))
    jax.effects_barrier()
    assert len(calls) == 4            # 2 forward + 2 recomputed in the backward pass
    want = jax.grad(lambda h, w: reference_sums(h, w, targets, mask)["ce_sum"], (0, 1))(
        hidden, kernel)
    assert_close(grads, want)

    calls.clear()
    nothing = jnp.zeros((B, L), jnp.float32)
    got = jax.jit(lambda h, w: chunked_loss.chunked_loss_sums(h, w, targets, nothing,
                                                              chunk_size=4))(hidden, kernel)
    jax.effects_barrier()
    assert len(calls) == 0 and float(got["ce_sum"]) == 0.0


def test_nan_and_garbage_in_masked_positions_do_not_leak(data):
    """Masked tokens may hold anything (NaN hidden rows, out-of-range targets, NaN teacher
    rows and top-k entries); sums and gradients equal those of clean inputs."""
    hidden, kernel, targets, mask = data
    topk_ids, logprobs, kd_mask = offline_inputs()
    masked = np.asarray(mask) == 0
    kd_off = masked | (np.asarray(kd_mask) == 0)
    dirty_hidden = jnp.where(masked[..., None], jnp.nan, hidden)
    dirty_targets = jnp.where(masked, -7, targets)
    dirty_ids = jnp.where(kd_off[..., None], 10_000, topk_ids)
    dirty_logprobs = jnp.where(kd_off[..., None], jnp.nan, logprobs)
    rng = np.random.default_rng(3)
    teacher_hidden = jnp.asarray(rng.normal(size=(B, L, 24)), jnp.float32)
    teacher_kernel = jnp.asarray(rng.normal(size=(24, V)), jnp.float32)
    dirty_teacher = jnp.where(masked[..., None], jnp.inf, teacher_hidden)

    cases = [
        (dict(kd=KD("offline"), topk_ids=topk_ids, topk_logprobs=logprobs, kd_mask=kd_mask),
         dict(topk_ids=dirty_ids, topk_logprobs=dirty_logprobs)),
        (dict(kd=KD("online", kind="jsd"), teacher_hidden=teacher_hidden,
              teacher_head_kernel=teacher_kernel), dict(teacher_hidden=dirty_teacher)),
    ]
    for clean_kw, dirt in cases:
        def run(h, t, kw):
            def f(h, w):
                sums = chunked_loss.chunked_loss_sums(h, w, t, mask, chunk_size=4, **kw)
                return objective(sums), sums
            return jax.jit(jax.value_and_grad(f, (0, 1), has_aux=True))(h, kernel)
        (_, clean), clean_grads = run(hidden, targets, clean_kw)
        (_, dirty), dirty_grads = run(dirty_hidden, dirty_targets, {**clean_kw, **dirt})
        for tree in (dirty, dirty_grads):
            assert all(bool(jnp.isfinite(x).all()) for x in jax.tree_util.tree_leaves(tree))
        assert_close(dirty, clean)
        assert_close(dirty_grads, clean_grads)


def test_batch_sharded_inputs_give_the_same_sums(data):
    """Rows sharded over two devices: the chunking keeps the batch axis, same result."""
    if len(jax.devices()) < 2:
        pytest.skip("needs 2 devices")
    hidden, kernel, targets, mask = data
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("data",))
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def f(h, w, t, m):
        return jax.value_and_grad(lambda h, w: chunked_loss.chunked_loss_sums(
            h, w, t, m, chunk_size=5)["ce_sum"], (0, 1))(h, w)
    value, grads = jax.jit(f, in_shardings=(rows, whole, rows, rows))(hidden, kernel, targets,
                                                                       mask)
    want_value, want_grads = f(hidden, kernel, targets, mask)
    assert_close((value, grads), (want_value, want_grads))


def test_chunked_gradient_needs_far_less_temporary_memory():
    """Compiled temp bytes of grad at 4096 tokens x 8192 ids: chunked (512) vs full logits.
    (One f32 copy of the full logits is 128 MiB.) A compile-time check, nothing timed."""
    tokens, dim, vocab = 4096, 32, 8192
    hidden = jax.ShapeDtypeStruct((1, tokens, dim), jnp.float32)
    kernel = jax.ShapeDtypeStruct((dim, vocab), jnp.float32)
    targets = jax.ShapeDtypeStruct((1, tokens), jnp.int32)
    mask = jax.ShapeDtypeStruct((1, tokens), jnp.float32)

    def temp_bytes(loss):
        grad = jax.jit(jax.grad(loss, (0, 1)))
        return grad.lower(hidden, kernel, targets, mask).compile().memory_analysis(
        ).temp_size_in_bytes

    full = temp_bytes(lambda h, w, t, m: reference_sums(h, w, t, m)["ce_sum"])
    chunked = temp_bytes(lambda h, w, t, m: chunked_loss.chunked_loss_sums(
        h, w, t, m, chunk_size=512)["ce_sum"])
    print(f"temp bytes: full {full}, chunked {chunked}, ratio {chunked / full:.3f}")
    assert full >= tokens * vocab * 4          # at least one full f32 logits copy
    assert chunked < full / 4


def test_bad_arguments_are_refused(data):
    hidden, kernel, targets, mask = data
    call = chunked_loss.chunked_loss_sums
    with pytest.raises(ValueError, match="head_layout"):
        call(hidden, kernel, targets, mask, chunk_size=4, head_layout="dvv")
    with pytest.raises(ValueError, match="teacher_hidden"):
        call(hidden, kernel, targets, mask, chunk_size=4, kd=KD("online"))
    teacher_kernel = jnp.zeros((D, V + 3))
    with pytest.raises(ValueError, match="kd_vocab_size"):
        call(hidden, kernel, targets, mask, chunk_size=4, kd=KD("online"),
             teacher_hidden=hidden, teacher_head_kernel=teacher_kernel)
    with pytest.raises(ValueError, match="kd_vocab_size"):
        call(hidden, kernel, targets, mask, chunk_size=4, kd=KD("online"),
             teacher_hidden=hidden, teacher_head_kernel=teacher_kernel, kd_vocab_size=V + 1)
    with pytest.raises(ValueError, match="topk"):
        call(hidden, kernel, targets, mask, chunk_size=4, kd=KD("offline"))
    with pytest.raises(ValueError, match="targets"):
        call(hidden, kernel, targets[:, :-1], mask, chunk_size=4)


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_trainer_refuses_a_loss_chunk_size_that_is_not_a_count(bad):
    import optax
    from distill_jax import models
    from distill_jax.training.trainer import Trainer
    with pytest.raises(ValueError, match="train.loss_chunk_size must be an int >= 0"):
        Trainer(models.get_config("tiny-llama"), optax.sgd(0.1), optax.constant_schedule(0.1),
                loss_chunk_size=bad)
