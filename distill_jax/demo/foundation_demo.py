"""What `make demo` runs until the full pipeline exists.

Trains a SentencePiece tokenizer on the synthetic task, builds a tiny random
model with that vocabulary on a mesh, renders a chat prompt, decodes greedily,
and round-trips the model through an HF safetensors export. The continuation is
gibberish (the model is untrained); the point is that every piece runs.
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import models, sharding
from distill_jax.demo import arithmetic
from distill_jax.tokenizer import load_tokenizer, train_sentencepiece


def greedy_continuation(cfg, params, prompt_ids, max_new_tokens, stop_ids=(), mesh=None):
    """Greedy decoding by full recompute into one fixed-length buffer (compiles once).

    A simple reference loop; the KV-cache sampler in `distill_jax.sampling` is the
    production path.
    """
    total = len(prompt_ids) + max_new_tokens
    buffer = np.zeros((1, total), np.int32)
    buffer[0, :len(prompt_ids)] = prompt_ids
    model = models.Transformer(cfg)

    @jax.jit
    def next_token(p, tokens, position):
        logits = model.apply({"params": p}, tokens)                  # [1, total, vocab]
        return jnp.argmax(jax.lax.dynamic_index_in_dim(logits[0], position, keepdims=False))

    out = []
    with sharding.mesh_context(mesh):
        for step in range(max_new_tokens):
            position = len(prompt_ids) + step - 1
            token = int(next_token(params, jnp.asarray(buffer), position))
            out.append(token)
            if token in stop_ids:
                break
            buffer[0, position + 1] = token
    return out


def run(config) -> dict:
    start = time.time()
    out_dir = config.output_dir
    os.makedirs(out_dir, exist_ok=True)
    problems = arithmetic.make_split(config.seed, 0, config.tokenizer.corpus_problems)
    corpus = [p.question + "\n" + p.solution for p in problems]
    sp_path = train_sentencepiece(corpus, os.path.join(out_dir, "tokenizer"),
                                  vocab_size=config.tokenizer.vocab_size)
    tok = load_tokenizer(sp_path)
    print(f"tokenizer: {sp_path} ({tok.vocab_size} pieces)")

    mesh = sharding.make_mesh(dict(config.mesh))
    section = models.model_section(**config.model, init_seed=config.seed)
    section.overrides.update(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    cfg, params = models.model_from_section(section, tok.vocab_size, mesh)
    print(f"model: {cfg.name} {cfg.model_type}, {models.count_params(cfg):,} params, "
          f"mesh {dict(mesh.shape)}")

    prompt = tok.apply_chat_template([{"role": "user", "content": config.decode.prompt}],
                                     assistant_prefix="<think>\n")
    prompt_ids = tok.encode(prompt)
    new_ids = greedy_continuation(cfg, params, prompt_ids, config.decode.max_new_tokens,
                                  stop_ids=tok.stop_token_ids(), mesh=mesh)
    print("prompt:\n" + prompt)
    print(f"greedy continuation ({len(new_ids)} tokens, untrained model): "
          f"{tok.decode(new_ids)!r}")

    export_dir = os.path.join(out_dir, "hf_export")
    models.save_hf_checkpoint(export_dir, cfg, params)
    cfg2, params2 = models.load_hf_checkpoint(export_dir)
    tokens = jnp.asarray([prompt_ids])
    diff = float(jnp.abs(models.Transformer(cfg).apply({"params": params}, tokens)
                         - models.Transformer(cfg2).apply({"params": params2}, tokens)).max())
    print(f"HF safetensors export: {export_dir} (reloaded, max logit diff {diff:.2e})")
    print(f"done in {time.time() - start:.1f}s")
    return {"prompt_ids": prompt_ids, "new_ids": new_ids, "export_dir": export_dir,
            "round_trip_max_diff": diff}
