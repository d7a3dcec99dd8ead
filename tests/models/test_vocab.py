"""Growing the vocabulary: old tokens unchanged, new rows the mean, placement kept."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax import models, sharding

NEW_VOCAB = 262  # tiny presets have 256: room for the six DeepSeek-R1 markers


def _forward(cfg, params, tokens):
    return np.asarray(models.Transformer(cfg).apply({"params": params}, jnp.asarray(tokens)))


@pytest.mark.parametrize("name,tied", [("tiny-qwen2", True), ("tiny-llama", False)])
def test_old_logits_unchanged_and_new_rows_are_the_mean(name, tied):
    cfg = models.get_config(name)
    assert cfg.tie_word_embeddings == tied
    params = models.init_params(cfg, jax.random.key(0))
    tokens = np.array([[5, 17, 200, 3, 99, 255]])
    before = _forward(cfg, params, tokens)

    new_cfg, grown = models.resize_vocabulary(cfg, params, NEW_VOCAB)

    assert new_cfg == cfg.replace(vocab_size=NEW_VOCAB)
    embedding = np.asarray(grown["embedding"])
    assert embedding.shape == (NEW_VOCAB, cfg.hidden_size)
    assert grown["embedding"].dtype == params["embedding"].dtype
    np.testing.assert_array_equal(embedding[:256], np.asarray(params["embedding"]))
    mean_row = np.asarray(params["embedding"]).mean(axis=0)
    np.testing.assert_allclose(embedding[256:], np.broadcast_to(mean_row, (6, cfg.hidden_size)),
                               rtol=1e-6, atol=1e-7)
    if tied:
        assert "lm_head" not in grown
    else:
        head = np.asarray(grown["lm_head"])
        assert head.shape == (cfg.hidden_size, NEW_VOCAB)
        np.testing.assert_array_equal(head[:, :256], np.asarray(params["lm_head"]))
        np.testing.assert_allclose(head[:, 256:], np.repeat(
            np.asarray(params["lm_head"]).mean(axis=1, keepdims=True), 6, axis=1),
            rtol=1e-6, atol=1e-7)
    # Every other param is passed through untouched.
    assert grown["layers"] is params["layers"] and grown["final_norm"] is params["final_norm"]

    after = _forward(new_cfg, grown, tokens)
    assert after.shape == (1, 6, NEW_VOCAB)
    np.testing.assert_allclose(after[..., :256], before, rtol=1e-5, atol=1e-5)
    # The new ids' logits start as those of an average token, not at an extreme.
    assert np.all(np.abs(after[..., 256:]) <= np.abs(before).max())

    # The new ids run through the model, and all six rows are the same (the mean).
    with_new = _forward(new_cfg, grown, np.array([[5, 256, 17, 261]]))
    assert np.all(np.isfinite(with_new))
    np.testing.assert_allclose(_forward(new_cfg, grown, np.array([[256]])),
                               _forward(new_cfg, grown, np.array([[261]])), rtol=1e-6)


def test_bfloat16_params_keep_their_dtype_and_numpy_params_work():
    cfg = models.get_config("tiny-llama", param_dtype="bfloat16")
    params = models.init_params(cfg, jax.random.key(3))
    host = jax.tree_util.tree_map(np.asarray, params)
    for given in (params, host):
        _, grown = models.resize_vocabulary(cfg, given, NEW_VOCAB)
        assert grown["embedding"].dtype == jnp.bfloat16 and grown["lm_head"].dtype == jnp.bfloat16
        assert isinstance(grown["embedding"], type(given["embedding"]))
        # The mean is taken in float32 and rounded once.
        expected = np.asarray(given["embedding"]).astype(np.float32).mean(axis=0)
        np.testing.assert_array_equal(np.asarray(grown["embedding"])[-1],
                                      expected.astype(jnp.bfloat16))


def test_sharded_params_stay_sharded_by_their_logical_axes():
    cfg = models.get_config("tiny-llama")
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    params = models.init_params(cfg, jax.random.key(0), mesh=mesh)
    new_cfg, grown = models.resize_vocabulary(cfg, params, NEW_VOCAB)
    expected = sharding.logical_to_shardings(models.param_logical_axes(new_cfg), mesh)
    for name in ("embedding", "lm_head"):
        assert grown[name].sharding.is_equivalent_to(expected[name], grown[name].ndim)
    plain = jax.tree_util.tree_map(np.asarray, params)
    _, grown_plain = models.resize_vocabulary(cfg, plain, NEW_VOCAB)
    np.testing.assert_allclose(np.asarray(grown["lm_head"]), grown_plain["lm_head"], atol=1e-8)

    # A size the tensor axis cannot split is refused with the fix in the message.
    with pytest.raises(ValueError, match="embedding: vocabulary size 261 .* multiple of 2"):
        models.resize_vocabulary(cfg, params, 261)


def test_shrinking_and_mismatched_params_are_refused():
    cfg = models.get_config("tiny-qwen2")
    params = models.init_params(cfg, jax.random.key(0))
    with pytest.raises(ValueError,
                       match="cannot shrink the vocabulary of tiny-qwen2 from 256 to 200"):
        models.resize_vocabulary(cfg, params, 200)
    same_cfg, same = models.resize_vocabulary(cfg, params, 256)
    assert same_cfg is cfg and same["embedding"] is params["embedding"]
    with pytest.raises(ValueError, match="params have no 'lm_head'"):
        models.resize_vocabulary(cfg.replace(tie_word_embeddings=False), params, NEW_VOCAB)
    with pytest.raises(ValueError, match=r"params\['embedding'\] has shape \(256, 64\), but the "
                                         r"config says \(300, 64\)"):
        models.resize_vocabulary(cfg.replace(vocab_size=300), params, 310)


@pytest.mark.parametrize("first_new,new_vocab,rows", [(250, 253, 256), (254, 260, 384)])
def test_added_token_rows_start_at_the_mean_of_the_real_rows(first_new, new_vocab, rows):
    # (250, 253): three markers land in the padding of a 256-row model (Qwen-like);
    # (254, 260): they run past it and the model grows (to a padded 384 rows).
    cfg = models.get_config("tiny-llama")
    params = models.init_params(cfg, jax.random.key(0))
    new_cfg, out = models.add_token_rows(cfg, params, range(first_new, new_vocab), rows)
    assert new_cfg.vocab_size == rows
    assert out["embedding"].shape == (rows, cfg.hidden_size)
    for name, axis in (("embedding", 0), ("lm_head", 1)):
        old, new = np.asarray(params[name]), np.asarray(out[name])
        old_rows, new_rows = np.moveaxis(old, axis, 0), np.moveaxis(new, axis, 0)
        np.testing.assert_array_equal(new_rows[:first_new], old_rows[:first_new])
        mean = old_rows[:first_new].mean(axis=0)
        np.testing.assert_allclose(new_rows[first_new:new_vocab],
                                   np.broadcast_to(mean, new_rows[first_new:new_vocab].shape),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(new_rows[new_vocab:256], old_rows[new_vocab:256])
