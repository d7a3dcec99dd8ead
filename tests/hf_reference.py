"""Tiny random transformers models saved to disk: the reference for parity tests."""
import numpy as np
import torch
import transformers

TINY_HF_CONFIGS = {
    # Llama 3.1-style: GQA, llama3 rope scaling, untied head.
    "llama": lambda: transformers.LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
        max_position_embeddings=512, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32,
                      "rope_theta": 500000.0},
        rope_theta=500000.0, bos_token_id=1, eos_token_id=2),
    # Qwen2.5-style: q/k/v bias, tied embeddings.
    "qwen2": lambda: transformers.Qwen2Config(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
        max_position_embeddings=512, tie_word_embeddings=True, rope_theta=1e6,
        bos_token_id=1, eos_token_id=2),
    # Qwen3-style: q/k RMSNorm, head_dim not hidden/heads.
    "qwen3": lambda: transformers.Qwen3Config(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6,
        max_position_embeddings=512, tie_word_embeddings=False, rope_theta=1e6,
        bos_token_id=1, eos_token_id=2),
    # Qwen3 with YaRN x4 (how Qwen3 runs past 32k): cos/sin carry YaRN's mscale.
    "qwen3_yarn": lambda: transformers.Qwen3Config(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
        max_position_embeddings=128, tie_word_embeddings=False, rope_theta=1e6,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                      "rope_theta": 1e6},
        bos_token_id=1, eos_token_id=2),
    # Qwen3-MoE: 8 experts, top-2 renormalised, q/k norms, GQA.
    "qwen3_moe": lambda: transformers.Qwen3MoeConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, rms_norm_eps=1e-6,
        max_position_embeddings=512, tie_word_embeddings=False, rope_theta=1e6,
        bos_token_id=1, eos_token_id=2),
    # DeepSeek-V3: MLA (q and kv ranks, decoupled RoPE key, v head dim != q/k), YaRN x4
    # with both mscales (prompts run past the original 32 positions), a first dense
    # layer, 8 routed experts in 4 groups (top-3 from the best 2 groups), one shared.
    "deepseek_v3": lambda: transformers.DeepseekV3Config(
        vocab_size=256, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
        n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2,
        first_k_dense_replace=1, n_shared_experts=1, routed_scaling_factor=2.5,
        q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
        v_head_dim=12, max_position_embeddings=128, rms_norm_eps=1e-6,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                      "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.8,
                      "rope_theta": 10000.0},
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
}


def make_hf_model(kind: str, seed: int = 0):
    """A random model whose norms and biases are perturbed too (so mapping bugs show)."""
    torch.manual_seed(seed)
    config = TINY_HF_CONFIGS[kind]()
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
        for name, b in model.named_buffers():   # DeepSeek's router correction bias
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.05 * torch.randn_like(b))
    return model.eval().float()


def save_hf_model(kind: str, path, seed: int = 0, dtype=torch.float32):
    model = make_hf_model(kind, seed)
    model.to(dtype).save_pretrained(str(path), safe_serialization=True)
    return model


def padded_batch(seed: int = 0, lengths=(11, 7, 3), vocab: int = 256):
    """Left-padded token batch: (tokens [B, L], mask [B, L]) as numpy int arrays."""
    rng = np.random.default_rng(seed)
    width = max(lengths)
    tokens = np.zeros((len(lengths), width), np.int32)
    mask = np.zeros((len(lengths), width), np.int32)
    for row, n in enumerate(lengths):
        tokens[row, width - n:] = rng.integers(3, vocab, size=n)
        mask[row, width - n:] = 1
    return tokens, mask


def hf_logits(model, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    t = torch.tensor(tokens, dtype=torch.long)
    m = torch.tensor(mask, dtype=torch.long)
    positions = (m.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=t, attention_mask=m, position_ids=positions)
    return out.logits.float().numpy()


def hf_greedy(model, prompts, max_new_tokens: int) -> list[list[int]]:
    """transformers' greedy `generate` of each prompt (left-padded into one batch,
    no stop token): the new token ids of every row."""
    width = max(map(len, prompts))
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=None, pad_token_id=0)
    return [row[width:].tolist() for row in out]
