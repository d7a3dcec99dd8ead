"""Attention kernels against the xla reference: values and gradients, on rows that
are packed, left-padded, GQA and of lengths no block divides."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax import models, sharding
from distill_jax.models import attention
from distill_jax.models.transformer import segment_positions


def _rows(length, heads=4, kv_heads=2, head_dim=16, seed=0):
    """Two rows: one left-padded, one packed with two documents and a padded tail."""
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(2, length, heads, head_dim)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, length, kv_heads, head_dim)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(2, length, kv_heads, head_dim)), jnp.float32)
    seg = np.ones((2, length), np.int32)
    seg[0, :length // 7] = 0
    cut, tail = length // 2 + 3, length - length // 9
    seg[1, cut:tail] = 2
    seg[1, tail:] = 0
    return q, k, v, jnp.asarray(seg)


def _reference(q, k, v, seg):
    pos = segment_positions(seg)
    return attention.xla_attention(q, k, v, attention.attention_mask(seg, seg, pos, pos))


def _check_against_reference(kernel, q, k, v, seg, atol):
    real = np.asarray(seg) > 0
    # Only real rows are read downstream; the weights zero the padding rows' outputs.
    w = jnp.asarray(np.random.default_rng(9).normal(size=q.shape), jnp.float32) * \
        jnp.asarray(real)[:, :, None, None]
    ref_out, ref_grads = jax.value_and_grad(
        lambda *a: jnp.sum(_reference(*a, seg) * w), argnums=(0, 1, 2))(q, k, v)
    out, grads = jax.value_and_grad(
        lambda *a: jnp.sum(kernel(*a, seg) * w), argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(np.asarray(kernel(q, k, v, seg))[real],
                               np.asarray(_reference(q, k, v, seg))[real], atol=atol)
    np.testing.assert_allclose(float(out), float(ref_out), rtol=1e-5, atol=atol)
    for name, a, b in zip("qkv", grads, ref_grads):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, err_msg=f"d{name}")


@pytest.mark.parametrize("length,block", [(37, 8), (64, 16), (50, 512)])
def test_blockwise_equals_xla(length, block):
    q, k, v, seg = _rows(length)
    _check_against_reference(lambda *a: attention.blockwise_attention(*a, block_size=block),
                             q, k, v, seg, atol=1e-5)


def test_blockwise_gives_zero_for_rows_with_nothing_to_attend():
    q, k, v, seg = _rows(20)
    out = np.asarray(attention.blockwise_attention(q, k, v, seg, block_size=8))
    assert np.all(out[np.asarray(seg) == 0] == 0) and np.isfinite(out).all()


def test_blockwise_skips_blocks_above_the_diagonal():
    """A NaN planted in a key block after the query block cannot reach it: the
    loop never reads that block (a masked read would still give NaN * 0 = NaN)."""
    q, k, v, _ = _rows(32)
    seg = jnp.ones((2, 32), jnp.int32)
    poisoned = v.at[:, 16:].set(jnp.nan)
    out = np.asarray(attention.blockwise_attention(q, k, poisoned, seg, block_size=16))
    assert np.isfinite(out[:, :16]).all() and np.isnan(out[:, 16:]).all()


def test_splash_in_interpret_mode_equals_xla():
    """The Pallas TPU kernel, run by the Pallas interpreter on CPU; 150 tokens pad to
    two 128-token tiles."""
    q, k, v, seg = _rows(150, head_dim=32)
    _check_against_reference(
        lambda *a: attention.splash_attention(*a, block_size=128, interpret=True),
        q, k, v, seg, atol=2e-5)


def test_splash_under_a_mesh_runs_per_shard():
    q, k, v, seg = _rows(130, heads=4, kv_heads=2, head_dim=32)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 2}, jax.devices()[:4])
    kernel = jax.jit(lambda *a: attention.splash_attention(*a, block_size=128, interpret=True))
    with sharding.mesh_context(mesh):
        out = kernel(q, k, v, seg)
        # Each device ran the kernel on its own rows and heads: one shard_map, whose
        # inputs are split over data (rows) and tensor (heads).
        assert "shard_map" in str(jax.make_jaxpr(kernel)(q, k, v, seg))
    real = np.asarray(seg) > 0
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(_reference(q, k, v, seg))[real],
                               atol=2e-5)


def test_cudnn_packed_layout_describes_the_segments():
    """cuDNN reads segments as (lengths, offsets): rebuilding the causal mask from
    them gives exactly the segment mask the reference uses."""
    _, _, _, seg = _rows(23)
    seg = jnp.concatenate([seg, jnp.asarray([[3, 3, 0, 0, 4, 4, 4, 5] + [0] * 15])], axis=0)
    lengths, offsets = attention.packed_segments(seg)
    lengths, offsets = np.asarray(lengths), np.asarray(offsets)
    length = seg.shape[1]
    for row in range(seg.shape[0]):
        rebuilt = np.zeros((length, length), bool)
        for n, start in zip(lengths[row], offsets[row]):
            if n < 0:
                break
            for i in range(start, start + n):
                rebuilt[i, start:i + 1] = True
        pos = segment_positions(seg[row:row + 1])
        expected = np.asarray(attention.attention_mask(seg[row:row + 1], seg[row:row + 1],
                                                       pos, pos))[0]
        np.testing.assert_array_equal(rebuilt, expected, err_msg=f"row {row}")
    # Segment slots in order, -1 after the last: the rows hold 1, 2 and 3 segments.
    assert [int((n >= 0).sum()) for n in lengths] == [1, 2, 3]
    assert all((n[(n >= 0).sum():] == -1).all() for n in lengths)


def test_resolve_picks_by_backend_and_length():
    limit = attention.AUTO_XLA_MAX_LEN
    assert attention.resolve("auto", 32768, "tpu") == "splash"
    assert attention.resolve("auto", 32768, "gpu") == "cudnn"
    assert attention.resolve("auto", limit, "cpu") == "xla"
    assert attention.resolve("auto", limit + 1, "cpu") == "blockwise"
    assert attention.resolve("blockwise", 16, "tpu") == "blockwise"


@pytest.mark.parametrize("impl,backend", [("cudnn", "cpu"), ("splash", "gpu"),
                                          ("cudnn", "tpu")])
def test_a_kernel_the_backend_cannot_run_is_refused_naming_autos_pick(impl, backend):
    with pytest.raises(ValueError, match=rf"attention_impl='{impl}' runs on .* only; this "
                                         rf"backend is '{backend}', where attention_impl='auto' "
                                         "picks"):
        attention.resolve(impl, 4096, backend)
    with pytest.raises(ValueError, match="unknown attention_impl 'flash'"):
        attention.resolve("flash", 4096, backend)


def test_cudnn_selected_on_cpu_is_refused_by_the_model():
    cfg = models.get_config("tiny-llama").replace(attention_impl="cudnn")
    params = models.init_params(cfg.replace(attention_impl="xla"), jax.random.key(0))
    with pytest.raises(ValueError, match="where attention_impl='auto' picks 'xla'"):
        models.Transformer(cfg).apply({"params": params}, jnp.ones((1, 8), jnp.int32))


def test_model_with_blockwise_attention_equals_xla():
    """The whole model (GQA, qk-norm, packed and left-padded rows): logits on real
    tokens and the gradient of a loss on them."""
    cfg = models.get_config("tiny-qwen3")
    params = models.init_params(cfg, jax.random.key(3))
    tokens = jnp.asarray(np.random.default_rng(4).integers(0, cfg.vocab_size, (2, 40)),
                         jnp.int32)
    _, _, _, seg = _rows(40)
    real = jnp.asarray(seg) > 0

    def loss(p, impl):
        logits = models.Transformer(cfg.replace(attention_impl=impl)).apply(
            {"params": p}, tokens, segment_ids=seg)
        return jnp.sum(jnp.where(real[..., None], jax.nn.log_softmax(logits), 0.0)[..., 7]), \
            logits

    (ref, ref_logits), ref_grads = jax.value_and_grad(loss, has_aux=True)(params, "xla")
    (val, logits), grads = jax.value_and_grad(loss, has_aux=True)(params, "blockwise")
    np.testing.assert_allclose(np.asarray(logits)[np.asarray(real)],
                               np.asarray(ref_logits)[np.asarray(real)], atol=1e-5)
    np.testing.assert_allclose(float(val), float(ref), rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_blockwise_blocks_pad_the_row_least():
    assert attention._block_for(100, 256) == 100          # one block
    assert attention._block_for(512, 256) == 256
    assert attention._block_for(640, 512) == 128          # 640, not 1024
    assert attention._block_for(300, 256) == 64           # 320, not 512 or 384
    assert attention._block_for(1000, 256) == 256         # 1024 either way: the larger


def test_every_stage_refuses_such_a_kernel_before_weights_load(monkeypatch):
    """model_from_section (generation, evaluation, the training teacher) checks the
    kernel first: init or checkpoint loading is never reached."""
    from distill_jax.models import from_config, transformer

    def never(*args, **kwargs):
        raise AssertionError("weights were built before the kernel was checked")
    monkeypatch.setattr(transformer, "init_params", never)
    section = models.model_section(preset="tiny-llama", attention_impl="cudnn")
    with pytest.raises(ValueError, match=r"runs on GPU only; this backend is 'cpu', where "
                                         r"attention_impl='auto' picks 'blockwise \(xla for "
                                         r"rows of at most 128 tokens\)'"):
        from_config.model_from_section(section)
    assert attention.resolve("auto", None, "cpu") == "auto"
