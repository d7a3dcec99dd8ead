"""Mixture-of-experts and latent-attention models (Qwen3-MoE, DeepSeek-V3/R1):
parity with transformers, the decode cache, the dispatch, the mesh."""
import json

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from distill_jax import models, sampling, sharding
from distill_jax.models import moe as moe_lib
from distill_jax.models.config import MoeConfig
from distill_jax.models.safetensors_io import CheckpointError
from tests.hf_reference import hf_greedy, hf_logits, padded_batch, save_hf_model
from tests.sampling.test_sampler import PROMPTS

KINDS = ["qwen3_moe", "deepseek_v3"]


@pytest.fixture(scope="module", params=KINDS)
def reference(request, tmp_path_factory):
    """(kind, transformers model, our cfg, our params) of one tiny random checkpoint."""
    path = tmp_path_factory.mktemp(request.param)
    hf_model = save_hf_model(request.param, path)
    cfg, params = models.load_hf_checkpoint(path)
    return request.param, hf_model, cfg, params


def our_logits(cfg, params, tokens, mask):
    return np.asarray(models.Transformer(cfg).apply({"params": params}, jnp.asarray(tokens),
                                                    segment_ids=jnp.asarray(mask)))


def test_logits_match_transformers(reference):
    kind, hf_model, cfg, params = reference
    assert cfg.model_type == kind and cfg.moe is not None
    tokens, mask = padded_batch(lengths=(45, 17, 3))
    ours = our_logits(cfg, params, tokens, mask)
    real = mask.astype(bool)
    diff = np.abs(ours[real] - hf_logits(hf_model, tokens, mask)[real]).max()
    assert diff < 1e-4, f"{kind}: max abs logit diff {diff}"
    if kind == "deepseek_v3":   # YaRN (and its mscale) must matter, or parity shows nothing
        assert cfg.rope_scaling.kind == "yarn" and cfg.moe.first_dense_layers == 1
        plain = our_logits(cfg.replace(rope_scaling=None), params, tokens, mask)
        assert np.abs(plain[real] - ours[real]).max() > 1e-3


def test_greedy_generate_equals_transformers(reference):
    kind, hf_model, cfg, params = reference
    outs = sampling.Sampler(cfg, params).generate(
        PROMPTS, sampling.SamplingParams(temperature=0.0, max_new_tokens=24))
    ref = hf_greedy(hf_model, PROMPTS, 24)
    for i in range(len(PROMPTS)):
        assert outs[i][0].token_ids == ref[i], f"{kind} prompt {i}"


@pytest.mark.parametrize("preset", ["tiny-qwen3-moe", "tiny-deepseek-v3"])
def test_cache_decode_equals_full_recompute(preset):
    """Left-padded prompts prefilled into the cache, then one token at a time (MLA:
    the absorbed form over the latent cache) equal the full forward of each row."""
    cfg = models.get_config(preset)
    params = models.init_params(cfg, jax.random.key(1))
    model = models.Transformer(cfg)
    tokens, mask = padded_batch(seed=3, lengths=(12, 5))
    prompt, total = 8, tokens.shape[1]
    full = our_logits(cfg, params, tokens, mask)
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    prefill = jax.jit(lambda *a: model.apply({"params": params}, *a, method="prefill"))
    decode = jax.jit(lambda *a: model.apply({"params": params}, *a, method="decode"))
    cache = models.KVCache.init(cfg, 2, 256)
    last, cache = prefill(tokens[:, :prompt], positions[:, :prompt], mask[:, :prompt], cache)
    np.testing.assert_allclose(last, full[:, prompt - 1], atol=2e-5)
    for t in range(prompt, total):   # one compiled step: the index is traced
        logits, cache = decode(tokens[:, t:t + 1], positions[:, t:t + 1], mask[:, t:t + 1],
                               cache, jnp.int32(t))
        np.testing.assert_allclose(logits[:, 0], full[:, t], atol=2e-5, err_msg=f"step {t}")
    if cfg.mla is not None:   # the cache holds the latent and the RoPE key only
        assert cache.k.shape[2:] == (1, 256, cfg.mla.kv_lora_rank + cfg.mla.qk_rope_head_dim)
        assert cache.v.shape[-1] == 0


def test_latent_cache_of_deepseek_v3_is_a_small_fraction_of_full_kv():
    cfg = models.get_config("deepseek-v3", dtype="bfloat16")
    cache = jax.eval_shape(lambda: models.KVCache.init(cfg, 1, 1))
    latent = cache.k.size * 2 + cache.v.size * 2
    assert latent == 61 * (512 + 64) * 2 == models.kv_cache.bytes_per_token(cfg)
    full = 61 * 2 * 128 * 192 * 2       # k and v of 128 expanded heads (v padded to 192 or not)
    assert latent / full < 0.02


@pytest.mark.parametrize("preset", ["tiny-qwen3-moe", "tiny-deepseek-v3"])
def test_ragged_dispatch_equals_dense_reference_in_values_and_gradients(preset):
    cfg = models.get_config(preset)
    moe_cfg = cfg.moe
    block = moe_lib.MoeBlock(cfg)
    x = jax.random.normal(jax.random.key(0), (2, 7, cfg.hidden_size))
    params = flax.linen.meta.unbox(block.init(jax.random.key(1), x)["params"])
    if moe_cfg.scoring == "sigmoid":   # a non-zero correction bias, so it takes part
        params["router_bias"] = 0.1 * jax.random.normal(jax.random.key(2), (moe_cfg.num_experts,))
    dense = moe_lib.MoeBlock(cfg.replace(moe=MoeConfig(**{**moe_cfg.__dict__,
                                                          "dispatch": "dense"})))

    def loss(module, p, x):
        y = module.apply({"params": p}, x)
        return jnp.sum(y * jnp.cos(jnp.arange(y.size).reshape(y.shape)))

    np.testing.assert_allclose(block.apply({"params": params}, x),
                               dense.apply({"params": params}, x), atol=1e-6)
    g_ragged = jax.grad(loss, argnums=(1, 2))(block, params, x)
    g_dense = jax.grad(loss, argnums=(1, 2))(dense, params, x)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_ragged),
                            jax.tree_util.tree_leaves(g_dense)):
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=jax.tree_util.keystr(path))
    assert float(jnp.abs(g_ragged[0]["gate_kernel"]).max()) > 0


def test_load_balancing_loss_equals_transformers():
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func
    cfg = models.get_config("tiny-qwen3-moe")
    logits = jax.random.normal(jax.random.key(0), (20, cfg.moe.num_experts))
    _, experts = moe_lib.route(logits, None, cfg.moe)
    ours = moe_lib.load_balancing_loss(logits, experts, cfg.moe)
    ref = load_balancing_loss_func((torch.tensor(np.asarray(logits)),), cfg.moe.num_experts,
                                   cfg.moe.experts_per_token)
    np.testing.assert_allclose(float(ours), float(ref), rtol=1e-6)


def test_expert_mesh_gives_single_device_tokens():
    """fsdp 2 x expert 2 x tensor 2: experts split over `expert`, the MoE under
    shard_map; DeepSeek's config has MLA, a dense first layer and shared experts."""
    cfg = models.get_config("tiny-deepseek-v3")
    params = models.init_params(cfg, jax.random.key(0))
    sp = sampling.SamplingParams(n=2, temperature=0.0, max_new_tokens=12)
    single = sampling.Sampler(cfg, params).generate(PROMPTS, sp)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "expert": 2, "tensor": 2})
    sampler = sampling.Sampler(cfg, params, mesh=mesh)
    spec = sampler.params["layers"]["mlp"]["gate_kernel"].sharding.spec
    assert tuple(spec) == (None, "expert", "fsdp", "tensor")
    sharded = sampler.generate(PROMPTS, sp)
    for a, b in zip(single, sharded):
        assert [s.token_ids for s in a] == [s.token_ids for s in b]


def test_an_expert_count_the_mesh_does_not_divide_is_refused():
    cfg = models.get_config("tiny-qwen3-moe").replace(
        moe=MoeConfig(num_experts=6, experts_per_token=2, expert_intermediate_size=32))
    mesh = sharding.make_mesh({"data": 2, "expert": 4})
    with pytest.raises(ValueError, match=r"layers/mlp/\w+_kernel.*size 6.*'expert'"):
        models.init_params(cfg, jax.random.key(0), mesh=mesh)


@pytest.mark.parametrize("key,value", [("topk_method", "group_limited_greedy"),
                                       ("scoring_func", "softmax"), ("moe_layer_freq", 2)])
def test_a_routing_setting_we_do_not_implement_is_refused_before_loading(tmp_path, key, value):
    hf = models.to_hf_config(models.get_config("tiny-deepseek-v3"))
    hf[key] = value
    (tmp_path / "config.json").write_text(json.dumps(hf))   # and no weights at all
    with pytest.raises(CheckpointError, match=f"{key}={value!r}: not implemented"):
        models.load_hf_checkpoint(tmp_path)


def test_nested_overrides_merge_and_a_checkpoint_may_change_only_the_dispatch(tmp_path):
    section = models.model_section(preset="tiny-qwen3-moe")
    section.overrides = {"moe": {"dispatch": "dense", "experts_per_token": 3}}
    cfg = models.config_from_section(section)
    assert (cfg.moe.dispatch, cfg.moe.experts_per_token, cfg.moe.num_experts) == ("dense", 3, 8)
    base = models.get_config("tiny-qwen3-moe")
    zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), models.param_shapes(base))
    models.save_hf_checkpoint(tmp_path, base, zeros)
    section = models.model_section(checkpoint=str(tmp_path))
    section.overrides = {"moe": {"dispatch": "dense"}}        # how it runs: allowed
    assert models.config_from_section(section).moe.dispatch == "dense"
    section.overrides = {"moe": {"experts_per_token": 3}}     # what it is: refused
    with pytest.raises(ValueError, match="a checkpoint fixes its architecture"):
        models.config_from_section(section)
    section.overrides = {"moe": {"experts": 3}}
    with pytest.raises(ValueError, match=r"overrides.moe has unknown fields \['experts'\]"):
        models.config_from_section(section)


def test_expert_parallel_tokens_that_do_not_divide_are_an_error_not_a_gather():
    cfg = models.get_config("tiny-qwen3-moe")
    block = moe_lib.MoeBlock(cfg)
    x = jnp.ones((1, 3, cfg.hidden_size))
    params = flax.linen.meta.unbox(block.init(jax.random.key(0), x)["params"])
    mesh = sharding.make_mesh({"data": 1, "expert": 2}, jax.devices()[:2])
    with sharding.mesh_context(mesh), pytest.raises(ValueError, match="3 tokens over batch"):
        jax.jit(block.apply)({"params": params}, x)
