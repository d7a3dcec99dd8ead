"""MoE checkpoints (qwen3_moe, deepseek_v3) in the hub's layout: per-expert tensors,
DeepSeek's block-scaled FP8 weights and its multi-token-prediction layer.

The expected values are computed here independently of hf_io's tensor maps:
each of our leaves is rebuilt from the HF tensors with explicit numpy.
"""
import dataclasses
import json
import logging
import os

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers

from distill_jax import models, sharding
from distill_jax.models.safetensors_io import (CheckpointError, SafetensorsFile,
                                               write_safetensors)

FP8_BLOCK = 128
E4M3_MAX = 448.0


def _tree(tree):
    """{path string: numpy array} of a params pytree."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): np.asarray(jax.device_get(v)) for p, v in flat}


def _assert_trees_equal(got, want):
    got, want = _tree(got), _tree(want)
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def ours_from_hf(cfg, t):
    """Our params pytree from {HF name: float32 array}, written out leaf by leaf."""
    h = cfg.num_heads

    def heads_in(w, n, k):    # [n*k, in] -> [in, n, k]
        return w.reshape(n, k, w.shape[1]).transpose(2, 0, 1)

    def heads_out(w, n, k):   # [d, n*k] -> [n, k, d]
        return w.reshape(w.shape[0], n, k).transpose(1, 2, 0)

    out = {"embedding": t["model.embed_tokens.weight"],
           "final_norm": {"scale": t["model.norm.weight"]}}
    if not cfg.tie_word_embeddings:
        out["lm_head"] = t["lm_head.weight"].T
    for stack, first, count, is_moe in cfg.layer_stacks:
        per_layer = []
        for i in range(first, first + count):
            def w(name, i=i):
                return t[f"model.layers.{i}.{name}"]
            layer = {"input_norm": {"scale": w("input_layernorm.weight")},
                     "post_attn_norm": {"scale": w("post_attention_layernorm.weight")}}
            if cfg.mla is not None:
                mla = cfg.mla
                qk = mla.qk_nope_head_dim + mla.qk_rope_head_dim
                attn = {"kv_a_kernel": w("self_attn.kv_a_proj_with_mqa.weight").T,
                        "kv_a_norm": {"scale": w("self_attn.kv_a_layernorm.weight")},
                        "kv_b_kernel": heads_in(w("self_attn.kv_b_proj.weight"), h,
                                                mla.qk_nope_head_dim + mla.v_head_dim),
                        "o_kernel": heads_out(w("self_attn.o_proj.weight"), h, mla.v_head_dim)}
                if mla.q_lora_rank is None:
                    attn["q_kernel"] = heads_in(w("self_attn.q_proj.weight"), h, qk)
                else:
                    attn["q_a_kernel"] = w("self_attn.q_a_proj.weight").T
                    attn["q_a_norm"] = {"scale": w("self_attn.q_a_layernorm.weight")}
                    attn["q_b_kernel"] = heads_in(w("self_attn.q_b_proj.weight"), h, qk)
            else:
                kv, dh = cfg.num_kv_heads, cfg.head_dim
                attn = {"q_kernel": heads_in(w("self_attn.q_proj.weight"), h, dh),
                        "k_kernel": heads_in(w("self_attn.k_proj.weight"), kv, dh),
                        "v_kernel": heads_in(w("self_attn.v_proj.weight"), kv, dh),
                        "o_kernel": heads_out(w("self_attn.o_proj.weight"), h, dh),
                        "q_norm": {"scale": w("self_attn.q_norm.weight")},
                        "k_norm": {"scale": w("self_attn.k_norm.weight")}}
            layer["attn"] = attn
            if is_moe:
                experts = range(cfg.moe.num_experts)
                mlp = {"router_kernel": w("mlp.gate.weight").T}
                for proj in ("gate", "up", "down"):
                    mlp[f"{proj}_kernel"] = np.stack(
                        [w(f"mlp.experts.{j}.{proj}_proj.weight").T for j in experts])
                if cfg.moe.scoring == "sigmoid":
                    mlp["router_bias"] = w("mlp.gate.e_score_correction_bias")
                if cfg.moe.num_shared_experts:
                    mlp["shared"] = {f"{p}_kernel": w(f"mlp.shared_experts.{p}_proj.weight").T
                                     for p in ("gate", "up", "down")}
            else:
                mlp = {f"{p}_kernel": w(f"mlp.{p}_proj.weight").T for p in ("gate", "up", "down")}
            layer["mlp"] = mlp
            per_layer.append(layer)
        out[stack] = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *per_layer)
    return out


def _read_dir(path):
    st = SafetensorsFile(os.path.join(path, "model.safetensors"))
    return {n: np.array(st.get(n)) for n in st.names()}


def _randomize(model, seed):
    """Every parameter and buffer random, so that a swapped or mistransposed tensor shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in list(model.named_parameters()) + list(model.named_buffers()):
            if p.is_floating_point():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.eval()


HF_CONFIGS = {
    "deepseek_v3": lambda: transformers.DeepseekV3Config(
        vocab_size=256, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8,
        num_experts_per_tok=3, n_shared_experts=1, n_group=4, topk_group=2,
        first_k_dense_replace=1, kv_lora_rank=32, q_lora_rank=48, qk_nope_head_dim=16,
        qk_rope_head_dim=8, v_head_dim=16, max_position_embeddings=512,
        tie_word_embeddings=False),
    "qwen3_moe": lambda: transformers.Qwen3MoeConfig(
        vocab_size=256, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, max_position_embeddings=512,
        tie_word_embeddings=False),
}


@pytest.fixture(scope="module", params=sorted(HF_CONFIGS))
def hf_checkpoint(request, tmp_path_factory):
    """(model, directory) of a tiny random model saved by transformers itself."""
    path = tmp_path_factory.mktemp(request.param)
    model = _randomize(transformers.AutoModelForCausalLM.from_config(HF_CONFIGS[request.param]()),
                       seed=0)
    model.save_pretrained(str(path))
    return model, path


def test_transformers_checkpoint_loads_in_the_documented_layout(hf_checkpoint):
    model, path = hf_checkpoint
    tensors = _read_dir(path)
    # transformers writes one tensor per expert, as the hub does.
    assert any(".mlp.experts.7.down_proj.weight" in n for n in tensors)
    cfg, params = models.load_hf_checkpoint(path)
    assert cfg.model_type == model.config.model_type
    if cfg.model_type == "deepseek_v3":
        assert [s[0] for s in cfg.layer_stacks] == ["dense_layers", "layers"]
        assert cfg.mla.q_lora_rank == 48 and cfg.moe.num_groups == 4
    _assert_trees_equal(params, ours_from_hf(cfg, tensors))


def test_transformers_reads_back_our_save(hf_checkpoint, tmp_path):
    model, path = hf_checkpoint
    cfg, params = models.load_hf_checkpoint(path)
    models.save_hf_checkpoint(tmp_path, cfg, params)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path),
                                                                 dtype=torch.float32)
    want, got = model.state_dict(), reloaded.state_dict()
    assert sorted(got) == sorted(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name


@pytest.mark.parametrize("preset,overrides", [
    ("tiny-qwen3-moe", {}),
    ("tiny-deepseek-v3", {}),
    ("tiny-deepseek-v3", {"q_lora_rank": None}),
])
def test_round_trip_save_load(preset, overrides, tmp_path):
    cfg = models.get_config(preset)
    if overrides:
        cfg = cfg.replace(mla=dataclasses.replace(cfg.mla, **overrides))
    # Random values per param_shapes (norms and router bias included); init_params would
    # give the same structure but compiles the whole model.
    rng = np.random.default_rng(1)
    params = jax.tree_util.tree_map(
        lambda s: jax.numpy.asarray(rng.standard_normal(s.shape, np.float32), s.dtype),
        models.param_shapes(cfg))
    # Small shards: per-expert tensors spread over several files and an index.
    written = models.save_hf_checkpoint(tmp_path, cfg, params, max_shard_bytes=100_000)
    assert "model.safetensors.index.json" in written
    weight_map = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    last = cfg.num_layers - 1
    assert f"model.layers.{last}.mlp.experts.{cfg.moe.num_experts - 1}.up_proj.weight" in weight_map
    loaded_cfg, loaded = models.load_hf_checkpoint(tmp_path)
    assert loaded_cfg.layer_stacks == cfg.layer_stacks and loaded_cfg.mla == cfg.mla
    _assert_trees_equal(loaded, params)


def test_bfloat16_keeps_the_router_in_float32(hf_checkpoint, tmp_path):
    model, path = hf_checkpoint
    cfg, params = models.load_hf_checkpoint(path, dtype="bfloat16")
    mlp = params["layers"]["mlp"]
    assert mlp["router_kernel"].dtype == np.float32
    assert mlp["up_kernel"].dtype == ml_dtypes.bfloat16
    assert params["layers"]["attn"]["o_kernel"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(np.asarray(mlp["router_kernel"][0]),
                                  model.state_dict()["model.layers.%d.mlp.gate.weight"
                                                     % cfg.layer_stacks[-1][1]].numpy().T)
    models.save_hf_checkpoint(tmp_path, cfg, params)
    st = SafetensorsFile(tmp_path / "model.safetensors")
    first_moe = cfg.layer_stacks[-1][1]
    assert st.dtype(f"model.layers.{first_moe}.mlp.experts.0.up_proj.weight") == ml_dtypes.bfloat16
    # transformers keeps DeepSeek's router in float32; Qwen3-MoE's hub files are all bf16.
    router = np.float32 if cfg.model_type == "deepseek_v3" else ml_dtypes.bfloat16
    assert st.dtype(f"model.layers.{first_moe}.mlp.gate.weight") == router


# --- DeepSeek FP8 ---------------------------------------------------------------------

def _quantize(w):
    """DeepSeek-style e4m3 weight + float32 scale_inv per 128x128 block."""
    rows, cols = -(-w.shape[0] // FP8_BLOCK), -(-w.shape[1] // FP8_BLOCK)
    scale = np.zeros((rows, cols), np.float32)
    q = np.zeros(w.shape, ml_dtypes.float8_e4m3fn)
    for r in range(rows):
        for c in range(cols):
            blk = (slice(r * FP8_BLOCK, (r + 1) * FP8_BLOCK),
                   slice(c * FP8_BLOCK, (c + 1) * FP8_BLOCK))
            scale[r, c] = np.abs(w[blk]).max() / E4M3_MAX
            q[blk] = (w[blk] / scale[r, c]).astype(ml_dtypes.float8_e4m3fn)
    return q, scale


def _dequantize_reference(q, scale):
    full = np.repeat(np.repeat(scale, FP8_BLOCK, axis=0), FP8_BLOCK, axis=1)
    return q.astype(np.float32) * full[:q.shape[0], :q.shape[1]]


def _is_quantized(name):
    return name.startswith("model.layers.") and name.endswith(("_proj.weight", "_mqa.weight"))


QUANT_CONFIG = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                "weight_block_size": [FP8_BLOCK, FP8_BLOCK]}


def _write_checkpoint(path, hf_config, tensors):
    os.makedirs(path, exist_ok=True)
    (path / "config.json").write_text(json.dumps(hf_config))
    write_safetensors(os.path.join(path, "model.safetensors"), sorted(tensors.items()))


@pytest.fixture(scope="module")
def fp8_checkpoint(tmp_path_factory):
    """(config.json dict, {name: stored tensor}, {name: dequantised float32 reference}) of a
    tiny DeepSeek-V3 whose dense MLP [320, 192] spans 3x2 blocks, both last ones partial."""
    cfg = models.config_from_hf({**models.to_hf_config(models.get_config("tiny-deepseek-v3")),
                                 "hidden_size": 192, "intermediate_size": 320})
    hf_config = models.to_hf_config(cfg)
    model = transformers.DeepseekV3ForCausalLM(transformers.DeepseekV3Config(**hf_config))
    path = tmp_path_factory.mktemp("hf_names")
    _randomize(model, seed=1).save_pretrained(str(path))
    stored, reference = {}, {}
    for name, w in _read_dir(path).items():
        if _is_quantized(name):
            q, scale = _quantize(w)
            stored[name], stored[name + "_scale_inv"] = q, scale
            reference[name] = _dequantize_reference(q, scale)
        else:
            stored[name] = reference[name] = w
    assert stored["model.layers.0.mlp.down_proj.weight_scale_inv"].shape == (2, 3)
    assert stored["model.layers.0.mlp.gate_proj.weight"].dtype == ml_dtypes.float8_e4m3fn
    hf_config = {**hf_config, "quantization_config": QUANT_CONFIG}
    path = tmp_path_factory.mktemp("fp8")
    _write_checkpoint(path, hf_config, stored)
    return path, hf_config, stored, reference


def test_fp8_checkpoint_loads_dequantized(fp8_checkpoint):
    path, _, stored, reference = fp8_checkpoint
    cfg, params = models.load_hf_checkpoint(path)
    assert cfg.hidden_size == 192 and cfg.intermediate_size == 320
    _assert_trees_equal(params, ours_from_hf(cfg, reference))


def test_fp8_mesh_load_equals_host_load(fp8_checkpoint):
    path, *_ = fp8_checkpoint
    _, plain = models.load_hf_checkpoint(path)
    mesh = sharding.make_mesh({"fsdp": 2, "expert": 2, "tensor": 2})
    _, sharded = models.load_hf_checkpoint(path, mesh=mesh)
    up = sharded["layers"]["mlp"]["up_kernel"]      # [layers, experts, embed, mlp]
    assert up.addressable_shards[0].data.shape == (2, 4, 96, 16)
    dense = sharded["dense_layers"]["mlp"]["down_kernel"]   # [1, 320, 192]: partial blocks
    assert dense.addressable_shards[0].data.shape == (1, 160, 96)
    _assert_trees_equal(sharded, plain)


def _variant(path, hf_config, tensors, config_edit=None, tensor_edit=None):
    hf_config = json.loads(json.dumps(hf_config))
    tensors = dict(tensors)
    if config_edit:
        config_edit(hf_config)
    if tensor_edit:
        tensor_edit(tensors)
    _write_checkpoint(path, hf_config, tensors)
    return path


def test_fp8_without_scale_names_the_tensor(fp8_checkpoint, tmp_path):
    _, hf_config, stored, _ = fp8_checkpoint
    name = "model.layers.2.mlp.experts.5.up_proj.weight"
    path = _variant(tmp_path, hf_config, stored,
                    tensor_edit=lambda t: t.pop(name + "_scale_inv"))
    with pytest.raises(CheckpointError, match=rf"FP8 tensor '{name}' has no '{name}_scale_inv'"):
        models.load_hf_checkpoint(path)


def test_fp8_scale_of_wrong_shape_is_named(fp8_checkpoint, tmp_path):
    _, hf_config, stored, _ = fp8_checkpoint
    name = "model.layers.0.mlp.gate_proj.weight_scale_inv"
    path = _variant(tmp_path, hf_config, stored,
                    tensor_edit=lambda t: t.update({name: np.ones((2, 2), np.float32)}))
    with pytest.raises(CheckpointError, match=rf"'{name}' has shape \[2, 2\], expected \[3, 2\]"):
        models.load_hf_checkpoint(path)


@pytest.mark.parametrize("key,value", [("quant_method", "awq"), ("fmt", "int4")])
def test_unsupported_quantization_is_refused(fp8_checkpoint, tmp_path, key, value):
    _, hf_config, stored, _ = fp8_checkpoint
    path = _variant(tmp_path, hf_config, stored,
                    config_edit=lambda c: c["quantization_config"].update({key: value}))
    with pytest.raises(CheckpointError, match=rf"config.json: quantization_config {key}='{value}'"):
        models.load_hf_checkpoint(path)


def _add_mtp_layer(tensors, cfg_layers, stored):
    """DeepSeek's multi-token-prediction layer N = num_hidden_layers, as the hub ships it."""
    n = cfg_layers
    src = f"model.layers.{cfg_layers - 1}."
    for name, w in stored.items():
        if name.startswith(src):
            tensors[f"model.layers.{n}." + name[len(src):]] = w
    d = stored["model.norm.weight"].shape[0]
    q, scale = _quantize(np.ones((d, 2 * d), np.float32))
    tensors.update({f"model.layers.{n}.enorm.weight": np.ones(d, np.float32),
                    f"model.layers.{n}.hnorm.weight": np.ones(d, np.float32),
                    f"model.layers.{n}.eh_proj.weight": q,
                    f"model.layers.{n}.eh_proj.weight_scale_inv": scale,
                    f"model.layers.{n}.embed_tokens.weight": stored["model.embed_tokens.weight"],
                    f"model.layers.{n}.shared_head.norm.weight": np.ones(d, np.float32),
                    f"model.layers.{n}.shared_head.head.weight": stored["lm_head.weight"]})


def test_mtp_layer_is_skipped(fp8_checkpoint, tmp_path, caplog):
    _, hf_config, stored, reference = fp8_checkpoint
    layers = hf_config["num_hidden_layers"]
    path = _variant(tmp_path / "mtp", hf_config, stored,
                    config_edit=lambda c: c.update(num_nextn_predict_layers=1),
                    tensor_edit=lambda t: _add_mtp_layer(t, layers, stored))
    with caplog.at_level(logging.INFO, logger="distill_jax.models.hf_io"):
        cfg, params = models.load_hf_checkpoint(path)
    skipped = [r.getMessage() for r in caplog.records if "multi-token-prediction" in r.getMessage()]
    assert len(skipped) == 1 and f"model.layers.{layers}+" in skipped[0]
    _assert_trees_equal(params, ours_from_hf(cfg, reference))
    # Without num_nextn_predict_layers the same tensors are not part of the model.
    path = _variant(tmp_path / "no_mtp", hf_config, stored,
                    tensor_edit=lambda t: _add_mtp_layer(t, layers, stored))
    with pytest.raises(CheckpointError,
                       match=rf"not in a deepseek_v3 model.*model.layers.{layers}"):
        models.load_hf_checkpoint(path)
