"""Model behaviour that needs no reference: packing, sharding, presets, remat, attention impls."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from distill_jax import models, sharding


def _forward(cfg, params, tokens, **kw):
    return np.asarray(models.Transformer(cfg).apply({"params": params}, tokens, **kw))


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-qwen3"])
def test_packed_documents_match_running_each_alone(name):
    cfg = models.get_config(name)
    params = models.init_params(cfg, jax.random.key(1))
    rng = np.random.default_rng(0)
    doc_a = rng.integers(3, cfg.vocab_size, size=9)
    doc_b = rng.integers(3, cfg.vocab_size, size=6)
    packed = np.concatenate([doc_a, doc_b, [0, 0, 0]])[None]      # 3 padding tokens at the end
    segments = np.array([[1] * 9 + [2] * 6 + [0] * 3])
    out = _forward(cfg, params, jnp.asarray(packed), segment_ids=jnp.asarray(segments))
    alone_a = _forward(cfg, params, jnp.asarray(doc_a[None]))
    alone_b = _forward(cfg, params, jnp.asarray(doc_b[None]))
    np.testing.assert_allclose(out[0, :9], alone_a[0], atol=1e-5)
    np.testing.assert_allclose(out[0, 9:15], alone_b[0], atol=1e-5)
    # Without segment ids document b would see document a: the test can fail.
    unsegmented = _forward(cfg, params, jnp.asarray(packed))
    assert np.abs(unsegmented[0, 9:15] - alone_b[0]).max() > 1e-3


def test_segment_positions_restart_per_segment():
    seg = jnp.array([[0, 0, 1, 1, 1, 2, 2, 0]])
    np.testing.assert_array_equal(models.transformer.segment_positions(seg),
                                  [[0, 1, 0, 1, 2, 0, 1, 0]])


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 2, 2), (1, 2, 4)])
def test_sharded_forward_equals_single_device(mesh_shape):
    assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
    # 8 heads / 4 kv heads / vocab 512 so tensor=4 divides every sharded axis.
    cfg = models.get_config("tiny-qwen2").replace(num_heads=8, num_kv_heads=4, head_dim=8,
                                                  vocab_size=512)
    params = models.init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, size=(8, 16)).astype(np.int32)
    segments = np.ones_like(tokens)
    segments[:, :5] = 0  # left padding on every row
    ref = _forward(cfg, params, jnp.asarray(tokens), segment_ids=jnp.asarray(segments))

    mesh = sharding.make_mesh(mesh_shape)
    sharded_params = sharding.shard_params(params, models.param_logical_axes(cfg), mesh)
    # q kernel [layers, embed, heads, head_dim]: embed over fsdp, heads over tensor.
    q_spec = sharded_params["layers"]["attn"]["q_kernel"].sharding.spec
    assert tuple(q_spec)[:3] == (None, "fsdp", "tensor")
    batch = sharding.shard_batch({"tokens": tokens, "segment_ids": segments}, mesh)
    model = models.Transformer(cfg)

    param_shardings = sharding.logical_to_shardings(models.param_logical_axes(cfg), mesh)
    batch_shardings = {k: sharding.batch_sharding(mesh) for k in batch}
    forward = jax.jit(
        lambda p, b: model.apply({"params": p}, b["tokens"], segment_ids=b["segment_ids"]),
        in_shardings=(param_shardings, batch_shardings))
    with sharding.mesh_context(mesh):
        out = forward(sharded_params, batch)
    # The logits constraint [batch, length, vocab] took effect.
    expected = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(("data", "fsdp"), None, "tensor"))
    assert out.sharding.is_equivalent_to(expected, 3), out.sharding
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)


def test_init_directly_sharded():
    cfg = models.get_config("tiny-llama")
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    params = models.init_params(cfg, jax.random.key(0), mesh=mesh)
    assert params["lm_head"].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    plain = models.init_params(cfg, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(params["lm_head"]), np.asarray(plain["lm_head"]))


@pytest.mark.parametrize("policy", ["full", "dots", "dots_with_no_batch_dims", "save_qkv_proj"])
def test_remat_policies_give_same_gradients(policy):
    cfg = models.get_config("tiny-llama")
    params = models.init_params(cfg, jax.random.key(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, size=(2, 12)), jnp.int32)

    def loss(p, c):
        return models.Transformer(c).apply({"params": p}, tokens).mean()

    base = jax.grad(loss)(params, cfg)
    remat = jax.jit(jax.grad(loss), static_argnums=1)(params, cfg.replace(remat_policy=policy))
    for a, b in zip(jax.tree_util.tree_leaves(base), jax.tree_util.tree_leaves(remat)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_scan_unroll_does_not_change_results():
    cfg = models.get_config("tiny-llama")
    params = models.init_params(cfg, jax.random.key(0))
    tokens = jnp.ones((1, 6), jnp.int32)
    np.testing.assert_allclose(_forward(cfg, params, tokens),
                               _forward(cfg.replace(scan_unroll=2), params, tokens), atol=1e-6)


def _hf_param_count(hf_config: dict) -> int:
    """Parameters plus persistent buffers (DeepSeek's router correction bias is a
    buffer in transformers and a tensor of the checkpoint; ours a param)."""
    config = transformers.AutoConfig.for_model(**hf_config)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    saved = model.state_dict()
    return (sum(p.numel() for p in model.parameters())
            + sum(b.numel() for name, b in model.named_buffers() if name in saved))


@pytest.mark.parametrize("name", sorted(models.PRESETS))
def test_preset_param_count_equals_transformers(name):
    cfg = models.get_config(name)
    assert models.count_params(cfg) == _hf_param_count(models.to_hf_config(cfg))


# The published size of every real model among the presets, from a source that
# does not go through our presets: the parameter total of the released
# checkpoint. "index" is `metadata.total_size` of its model.safetensors.index.json,
# in bytes of bfloat16, so halved.
PUBLISHED_PARAMS = {
    # Qwen/Qwen2.5-0.5B: safetensors total (tied embeddings, no lm_head stored); card 0.49B.
    "qwen2.5-0.5b": 494_032_768,
    # Qwen/Qwen2.5-1.5B: safetensors total (tied); card 1.54B.
    "qwen2.5-1.5b": 1_543_714_304,
    # Qwen/Qwen2.5-7B: index 15_231_233_024 B; card 7.61B.
    "qwen2.5-7b": 7_615_616_512,
    # Qwen/Qwen2.5-14B: index 29_540_067_328 B.
    "qwen2.5-14b": 14_770_033_664,
    # Qwen/Qwen2.5-32B: index 65_527_752_704 B.
    "qwen2.5-32b": 32_763_876_352,
    # Qwen/Qwen2.5-Math-1.5B: safetensors total (tied), the same body as Qwen2.5-1.5B.
    "qwen2.5-math-1.5b": 1_543_714_304,
    # deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B: safetensors total; the Math-1.5B body
    # with an untied lm_head (+151_936 * 1536).
    "deepseek-r1-distill-qwen-1.5b": 1_777_088_000,
    # meta-llama/Llama-3.1-8B: index 16_060_522_496 B.
    "llama-3.1-8b": 8_030_261_248,
    # meta-llama/Llama-3.3-70B-Instruct: safetensors total (index 141_107_412_992 B, the
    # same as Llama-3.1-70B's).
    "llama-3.3-70b": 70_553_706_496,
    # Qwen/Qwen3-0.6B: the file holds 751_632_384 elements because it also stores
    # the tied lm_head (a copy of the 151_936 * 1024 embedding); the model has
    # 596_049_920 (transformers' num_parameters()).
    "qwen3-0.6b": 596_049_920,
    # Qwen/Qwen3-8B: index 16_381_470_720 B.
    "qwen3-8b": 8_190_735_360,
}

# Presets without a trusted published total: their published config.json values,
# written out here (not derived from our presets), counted by transformers.
PUBLISHED_CONFIGS = {
    # Qwen/Qwen2.5-Math-7B config.json: the Qwen2.5-7B shapes with a 4k context.
    "qwen2.5-math-7b": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 152064,
        "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_act": "silu",
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "use_sliding_window": False,
        "bos_token_id": 151643, "eos_token_id": 151643},
    # Qwen/Qwen3-30B-A3B config.json (card: 30.5B total, 3.3B activated).
    "qwen3-30b-a3b": {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
        "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144,
        "moe_intermediate_size": 768, "num_hidden_layers": 48, "num_attention_heads": 32,
        "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8,
        "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [],
        "max_position_embeddings": 40960, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False, "router_aux_loss_coef": 0.001,
        "bos_token_id": 151643, "eos_token_id": 151645},
    # Qwen/Qwen3-235B-A22B config.json (card: 235B total, 22B activated).
    "qwen3-235b-a22b": {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
        "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 12288,
        "moe_intermediate_size": 1536, "num_hidden_layers": 94, "num_attention_heads": 64,
        "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8,
        "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [],
        "max_position_embeddings": 40960, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False, "router_aux_loss_coef": 0.001,
        "bos_token_id": 151643, "eos_token_id": 151645},
}
# deepseek-ai/DeepSeek-V3 and DeepSeek-R1 config.json (identical architecture; card: 671B
# total, 37B activated; the checkpoint's 685B adds the 14B multi-token-prediction layer).
PUBLISHED_CONFIGS["deepseek-v3"] = PUBLISHED_CONFIGS["deepseek-r1"] = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
    "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432,
    "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_attention_heads": 128,
    "num_key_value_heads": 128, "n_routed_experts": 256, "n_shared_experts": 1,
    "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4, "first_k_dense_replace": 3,
    "routed_scaling_factor": 2.5, "norm_topk_prob": True, "kv_lora_rank": 512,
    "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "max_position_embeddings": 163840, "rope_theta": 10000, "rms_norm_eps": 1e-6,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                     "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                     "type": "yarn"},
    "aux_loss_alpha": 0.001, "scoring_func": "sigmoid", "topk_method": "noaux_tc",
    "tie_word_embeddings": False, "num_nextn_predict_layers": 1, "bos_token_id": 0,
    "eos_token_id": 1}
# Model-card totals and activated parameters of the MoE presets, in billions (the
# cards round: 3.3B is 3.35B, 22B is 22.2B, 37B is 37.6B counting the embedding).
PUBLISHED_MOE_BILLIONS = {"qwen3-30b-a3b": (30.5, 3.3), "qwen3-235b-a22b": (235, 22),
                          "deepseek-v3": (671, 37), "deepseek-r1": (671, 37)}


def test_every_published_preset_has_an_independent_size():
    # A new real-model preset must come with its published size (tiny-* are ours).
    published = sorted(name for name in models.PRESETS if not name.startswith("tiny-"))
    assert published == sorted([*PUBLISHED_PARAMS, *PUBLISHED_CONFIGS])


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_preset_has_the_published_size(name):
    assert models.count_params(models.get_config(name)) == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("name", sorted(PUBLISHED_CONFIGS))
def test_preset_has_the_size_of_the_published_config(name):
    assert models.count_params(models.get_config(name)) == \
        _hf_param_count(PUBLISHED_CONFIGS[name])
    # and the preset is what config_from_hf makes of that config.json
    assert models.config_from_hf(PUBLISHED_CONFIGS[name]).replace(name=name) == \
        models.get_config(name)


@pytest.mark.parametrize("name", sorted(PUBLISHED_MOE_BILLIONS))
def test_moe_presets_have_the_published_total_and_active_sizes(name):
    cfg = models.get_config(name)
    total, active = PUBLISHED_MOE_BILLIONS[name]
    assert models.count_params(cfg) / 1e9 == pytest.approx(total, rel=0.005)
    assert models.count_active_params(cfg) / 1e9 == pytest.approx(active, rel=0.03)


def test_config_round_trips_through_hf_dict():
    for name, cfg in models.PRESETS.items():
        again = models.config_from_hf(models.to_hf_config(cfg), name=cfg.name)
        assert again == cfg, name


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-qwen3"])
def test_incremental_decoding_with_cache_equals_full_forward(name):
    from distill_jax.models.transformer import segment_positions
    cfg = models.get_config(name)
    params = models.init_params(cfg, jax.random.key(5))
    model = models.Transformer(cfg)
    tokens = jnp.asarray([[0, 0, 5, 6, 7, 8, 9], [3, 4, 5, 6, 7, 8, 9]])
    segments = jnp.asarray([[0, 0, 1, 1, 1, 1, 1], [1] * 7])      # row 0 left-padded
    full = model.apply({"params": params}, tokens, segment_ids=segments)
    positions = segment_positions(segments)
    last, cache = model.apply({"params": params}, tokens[:, :4], positions[:, :4],
                              segments[:, :4], models.KVCache.init(cfg, 2, 10), method="prefill")
    pieces = [last[:, None]]
    for lo, hi in ((4, 5), (5, 7)):   # one token, then two at once
        logits, cache = model.apply({"params": params}, tokens[:, lo:hi], positions[:, lo:hi],
                                    segments[:, lo:hi], cache, lo, method="decode")
        pieces.append(logits)
    incremental = np.asarray(jnp.concatenate(pieces, axis=1))
    np.testing.assert_allclose(incremental, np.asarray(full)[:, 3:], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(cache.segment_ids[:, :7]), np.asarray(segments))


def test_decode_reads_only_its_window_and_the_window_changes_no_bit():
    """A 512-slot cache is two blocks of DECODE_BLOCK. A window of one block never
    touches the second (NaN planted there changes nothing), and its logits are
    bitwise those of reading both blocks of the clean cache: a block whose slots
    are all masked adds exactly nothing, so a step's numbers do not depend on how
    far the engine reads. Reading everything, the NaN poisons."""
    from distill_jax.models import attention
    from distill_jax.models.transformer import segment_positions
    cfg = models.get_config("tiny-llama")
    params = models.init_params(cfg, jax.random.key(8))
    model = models.Transformer(cfg)
    prompt = jnp.asarray([[0, 3, 4, 5, 6], [7, 8, 9, 10, 11]])
    segments = jnp.asarray([[0, 1, 1, 1, 1], [1] * 5])
    positions = segment_positions(segments)
    block = attention.DECODE_BLOCK
    _, cache = model.apply({"params": params}, prompt, positions, segments,
                           models.KVCache.init(cfg, 2, 2 * block), method="prefill")
    step = (jnp.asarray([[12], [13]]), positions[:, -1:] + 1, jnp.ones((2, 1), jnp.int32))

    def decode(c, window=None):
        return model.apply({"params": params}, *step, c, 5, window, method="decode")[0]
    clean_all = decode(cache)
    np.testing.assert_array_equal(np.asarray(decode(cache, block)), np.asarray(clean_all))
    poisoned = cache.replace(k=cache.k.at[:, :, :, block:].set(jnp.nan),
                             v=cache.v.at[:, :, :, block:].set(jnp.nan))
    np.testing.assert_array_equal(np.asarray(decode(poisoned, block)), np.asarray(clean_all))
    assert np.isnan(np.asarray(decode(poisoned))).all()


def test_per_row_cache_index_writes_each_row_at_its_own_fill():
    """A continuous-batching step: rows at different fill levels write at their own
    index; an index past the cache (an idle slot) writes nothing."""
    cfg = models.get_config("tiny-llama")
    cache = models.KVCache.init(cfg, 3, 8)
    new = jnp.ones((cfg.num_layers, 3, 1, cfg.num_kv_heads, cfg.head_dim))
    out = cache.write(new, 2 * new, jnp.ones((3, 1), jnp.int32),
                      jnp.asarray([[4], [6], [9]]), jnp.asarray([2, 5, 8]))
    filled = np.asarray(out.segment_ids)
    assert filled.tolist() == [[0, 0, 1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 0, 0], [0] * 8]
    assert np.asarray(out.positions)[1, 5] == 6
    k = np.asarray(out.k)
    assert (k[:, 0, :, 2] == 1).all() and (k[:, 1, :, 5] == 1).all()
    assert k.sum() == 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim
    assert (np.asarray(out.v)[:, 1, :, 5] == 2).all()


def test_insert_copies_prefilled_rows_into_slots_with_padding_anywhere():
    """Each host of a pod pads its own part of the insert list, so padding entries
    (slot >= rows) sit between real ones; every real entry is still copied, the
    rest of its row emptied, and nothing else touched."""
    cfg = models.get_config("tiny-llama")
    shape = (cfg.num_layers, 2, cfg.num_kv_heads, 3, cfg.head_dim)
    prefilled = models.KVCache(k=jnp.stack([jnp.full(shape[:1] + shape[2:], 1.0),
                                            jnp.full(shape[:1] + shape[2:], 2.0)], axis=1),
                               v=jnp.zeros(shape), segment_ids=jnp.ones((2, 3), jnp.int32),
                               positions=jnp.tile(jnp.arange(3), (2, 1)))
    cache = models.KVCache.init(cfg, 4, 8)
    cache = cache.replace(segment_ids=cache.segment_ids.at[:, 5].set(7))   # stale entries
    out = cache.insert(prefilled, source=jnp.asarray([1, 0, 0, 1]),
                       slot=jnp.asarray([3, 4, 4, 0]))          # 4 = padding, in the middle
    k = np.asarray(out.k)
    assert (k[:, 3, :, :3] == 2).all() and (k[:, 0, :, :3] == 2).all()
    assert (k[:, 1:3] == 0).all() and (k[:, :, :, 3:] == 0).all()
    seg = np.asarray(out.segment_ids)
    assert seg.tolist() == [[1, 1, 1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 7, 0, 0],
                            [0, 0, 0, 0, 0, 7, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]]


def test_prefill_returns_the_last_positions_logits():
    cfg = models.get_config("tiny-llama")
    params = models.init_params(cfg, jax.random.key(6))
    tokens = jnp.asarray([[0, 4, 5, 6], [7, 8, 9, 10]])
    segments = jnp.asarray([[0, 1, 1, 1], [1, 1, 1, 1]])
    model = models.Transformer(cfg)
    full = model.apply({"params": params}, tokens, segment_ids=segments)
    last, _ = model.apply({"params": params}, tokens,
                          models.transformer.segment_positions(segments), segments,
                          models.KVCache.init(cfg, 2, 6), method="prefill")
    assert last.shape == (2, cfg.vocab_size)
    np.testing.assert_allclose(np.asarray(last), np.asarray(full[:, -1]), atol=1e-5)


def test_rows_past_max_position_embeddings_are_warned_with_the_rope_scaling():
    cfg = models.get_config("tiny-llama")
    assert cfg.context_warning(cfg.max_position_embeddings) is None
    warning = cfg.context_warning(cfg.max_position_embeddings + 1)
    assert f"max_position_embeddings={cfg.max_position_embeddings}" in warning
    assert "RoPE scaling llama3" in warning and "model.overrides" in warning
    plain = models.get_config("tiny-qwen2")
    assert "no RoPE scaling" in plain.context_warning(10 ** 6)
