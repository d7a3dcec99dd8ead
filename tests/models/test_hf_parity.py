"""Our Flax model against transformers (torch CPU, float32) on tiny random checkpoints."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from distill_jax import models
from tests.hf_reference import hf_logits, padded_batch, save_hf_model

KINDS = ["llama", "qwen2", "qwen3"]


def our_logits(cfg, params, tokens, mask):
    return np.asarray(models.Transformer(cfg).apply({"params": params}, jnp.asarray(tokens),
                                                    segment_ids=jnp.asarray(mask)))


@pytest.mark.parametrize("kind", KINDS)
def test_logits_match_transformers_on_padded_batch(kind, tmp_path):
    hf_model = save_hf_model(kind, tmp_path)
    cfg, params = models.load_hf_checkpoint(tmp_path)
    assert cfg.model_type == kind
    tokens, mask = padded_batch()
    ours = our_logits(cfg, params, tokens, mask)
    ref = hf_logits(hf_model, tokens, mask)
    real = mask.astype(bool)
    diff = np.abs(ours[real] - ref[real]).max()
    assert diff < 1e-4, f"{kind}: max abs logit diff {diff}"


def test_llama3_rope_scaling_is_exercised(tmp_path):
    """The llama3 scaling must actually change logits, or the parity above proves nothing."""
    save_hf_model("llama", tmp_path)
    cfg, params = models.load_hf_checkpoint(tmp_path)
    assert cfg.rope_scaling is not None and cfg.rope_scaling.kind == "llama3"
    tokens, mask = padded_batch(lengths=(40, 40))
    plain = cfg.replace(rope_scaling=None)
    diff = np.abs(our_logits(cfg, params, tokens, mask) - our_logits(plain, params, tokens, mask))
    assert diff.max() > 1e-3


def test_qwen3_with_yarn_matches_transformers_past_the_original_context(tmp_path):
    hf_model = save_hf_model("qwen3_yarn", tmp_path)
    cfg, params = models.load_hf_checkpoint(tmp_path)
    assert cfg.rope_scaling.kind == "yarn"
    tokens, mask = padded_batch(lengths=(45, 17, 3))      # 45 > 32 original positions
    real = mask.astype(bool)
    ours = our_logits(cfg, params, tokens, mask)
    assert np.abs(ours[real] - hf_logits(hf_model, tokens, mask)[real]).max() < 1e-4
    plain = our_logits(cfg.replace(rope_scaling=None), params, tokens, mask)
    assert np.abs(plain[real] - ours[real]).max() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_export_round_trip_loads_in_transformers(kind, tmp_path):
    hf_model = save_hf_model(kind, tmp_path / "orig")
    cfg, params = models.load_hf_checkpoint(tmp_path / "orig")
    models.save_hf_checkpoint(tmp_path / "export", cfg, params)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path / "export"), attn_implementation="eager", dtype=torch.float32).eval()
    tokens, mask = padded_batch(seed=1)
    real = mask.astype(bool)
    exported = hf_logits(reloaded, tokens, mask)
    original = hf_logits(hf_model, tokens, mask)
    ours = our_logits(cfg, params, tokens, mask)
    assert np.array_equal(exported[real], original[real])
    assert np.abs(exported[real] - ours[real]).max() < 1e-4


def test_sharded_export_and_load(tmp_path):
    hf_model = save_hf_model("llama", tmp_path / "orig")
    cfg, params = models.load_hf_checkpoint(tmp_path / "orig")
    written = models.save_hf_checkpoint(tmp_path / "export", cfg, params, max_shard_bytes=100_000)
    assert "model.safetensors.index.json" in written
    assert sum(name.endswith(".safetensors") for name in written) > 2
    index = json.loads((tmp_path / "export" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {n for n in written if n.endswith(".safetensors")}
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path / "export"), attn_implementation="eager", dtype=torch.float32).eval()
    tokens, mask = padded_batch(seed=2)
    real = mask.astype(bool)
    assert np.array_equal(hf_logits(reloaded, tokens, mask)[real],
                          hf_logits(hf_model, tokens, mask)[real])
    cfg2, params2 = models.load_hf_checkpoint(tmp_path / "export")
    assert cfg2 == cfg
    np.testing.assert_array_equal(our_logits(cfg2, params2, tokens, mask),
                                  our_logits(cfg, params, tokens, mask))
    # A later unsharded save into the same directory removes the stale shards.
    models.save_hf_checkpoint(tmp_path / "export", cfg, params)
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
        "config.json", "model.safetensors"]


@pytest.mark.parametrize("torch_dtype,tol", [(torch.bfloat16, 0.0), (torch.float16, 0.0)])
def test_loads_half_precision_checkpoints(torch_dtype, tol, tmp_path):
    hf_model = save_hf_model("qwen2", tmp_path, dtype=torch_dtype)
    cfg, params = models.load_hf_checkpoint(tmp_path, dtype=jnp.float32)
    expected = hf_model.model.embed_tokens.weight.detach().float().numpy()
    assert np.abs(np.asarray(params["embedding"]) - expected).max() <= tol
    cfg16, params16 = models.load_hf_checkpoint(tmp_path, dtype=jnp.bfloat16)
    assert cfg16.param_dtype == "bfloat16"
    assert params16["embedding"].dtype == jnp.bfloat16
    q = hf_model.model.layers[1].self_attn.q_proj.weight.detach().float().numpy()
    ours_q = np.asarray(params["layers"]["attn"]["q_kernel"][1]).reshape(cfg.hidden_size, -1).T
    np.testing.assert_array_equal(ours_q, q)


def test_bf16_compute_stays_close(tmp_path):
    hf_model = save_hf_model("qwen3", tmp_path)
    cfg, params = models.load_hf_checkpoint(tmp_path, dtype=jnp.float32)
    tokens, mask = padded_batch()
    ours = our_logits(cfg.replace(dtype="bfloat16"), params, tokens, mask)
    ref = hf_logits(hf_model, tokens, mask)
    real = mask.astype(bool)
    assert ours.dtype == np.float32
    assert np.abs(ours[real] - ref[real]).max() < 0.1
