"""Growing a model's vocabulary after tokens were added to its tokenizer.

A student trained on a chat format its base tokenizer lacks (e.g. DeepSeek-R1's
markers on a Qwen vocabulary) gets those markers as new special tokens
(`Tokenizer.with_special_tokens`); the embedding, and an untied LM head, then
need rows for the new ids.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from distill_jax.models.config import ModelConfig


def resize_vocabulary(cfg: ModelConfig, params: Mapping[str, Any],
                      new_vocab_size: int) -> tuple[ModelConfig, dict[str, Any]]:
    """(cfg, params) with room for `new_vocab_size` token ids.

    New embedding rows (and LM-head columns when the head is untied) start as the
    mean of the existing ones: a new token then looks like an average token, so the
    model's outputs for existing text do not change and the logits of the new ids
    start near the others, instead of at a random or zero vector the optimizer must
    first pull into the distribution. Old rows are kept bit for bit.

    Params may be host numpy arrays or jax arrays; each grown array keeps its dtype
    and is placed like the array it replaces (for a sharded param, the same
    NamedSharding the logical-axis rules gave it), so this works before or after
    sharding. Other params are passed through. An equal size is a no-op; shrinking
    would drop trained tokens and is refused.
    """
    _check_resize(cfg, params, new_vocab_size)
    if new_vocab_size == cfg.vocab_size:
        return cfg, dict(params)
    grown = dict(params)
    grown["embedding"] = _grow_with_mean(params["embedding"], 0, new_vocab_size, "embedding")
    if not cfg.tie_word_embeddings:
        grown["lm_head"] = _grow_with_mean(params["lm_head"], 1, new_vocab_size, "lm_head")
    return cfg.replace(vocab_size=new_vocab_size), grown


def _check_resize(cfg: ModelConfig, params: Mapping[str, Any], new_vocab_size: int) -> None:
    if int(new_vocab_size) != new_vocab_size or new_vocab_size <= 0:
        raise ValueError(f"new_vocab_size must be a positive integer, got {new_vocab_size!r}")
    if new_vocab_size < cfg.vocab_size:
        raise ValueError(
            f"cannot shrink the vocabulary of {cfg.name or cfg.model_type} from "
            f"{cfg.vocab_size} to {new_vocab_size}: that would drop trained token ids")
    expected = {"embedding": (cfg.vocab_size, cfg.hidden_size)}
    if not cfg.tie_word_embeddings:
        expected["lm_head"] = (cfg.hidden_size, cfg.vocab_size)
    for name, shape in expected.items():
        if name not in params:
            raise ValueError(f"params have no {name!r} (tie_word_embeddings="
                             f"{cfg.tie_word_embeddings}); are these this config's params?")
        if tuple(params[name].shape) != shape:
            raise ValueError(f"params[{name!r}] has shape {tuple(params[name].shape)}, but the "
                             f"config says {shape}")


def _grow_with_mean(array, axis: int, new_size: int, name: str):
    """`array` with its `axis` extended to `new_size` by copies of its mean along it."""
    if not isinstance(array, jax.Array):
        return _append_mean(np, np.asarray(array), axis, new_size)
    if isinstance(array.sharding, NamedSharding):
        _check_divides(name, array.shape, axis, new_size, array.sharding)
    # jit so a sharded array is grown where it lives, never gathered onto one device.
    grow = jax.jit(lambda a: _append_mean(jnp, a, axis, new_size),
                   out_shardings=array.sharding)
    return grow(array)


def _append_mean(xp, array, axis: int, new_size: int):
    # The mean in float32: averaging ~10^5 bf16 rows in bf16 loses most of its digits.
    mean = xp.mean(array.astype(xp.float32), axis=axis, keepdims=True).astype(array.dtype)
    extra_shape = list(array.shape)
    extra_shape[axis] = new_size - array.shape[axis]
    return xp.concatenate([array, xp.broadcast_to(mean, tuple(extra_shape))], axis=axis)


def _check_divides(name: str, shape, axis: int, new_size: int, sharding: NamedSharding) -> None:
    spec = tuple(sharding.spec) + (None,) * len(shape)
    mesh_axes = spec[axis]
    if mesh_axes is None:
        return
    mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
    parts = int(np.prod([sharding.mesh.shape[a] for a in mesh_axes]))
    if new_size % parts:
        raise ValueError(
            f"{name}: vocabulary size {new_size} does not divide over mesh axes {mesh_axes} "
            f"(x{parts}); pad new_vocab_size to a multiple of {parts}")


def add_token_rows(cfg: ModelConfig, params: Mapping[str, Any], new_ids: range,
                   vocab_size: int | None = None) -> tuple[ModelConfig, dict[str, Any]]:
    """(cfg, params) for a tokenizer whose ids `new_ids` were just added, with
    `vocab_size` rows (default: the model's own, or just enough for `new_ids`).

    The rows of the new ids — whether they fall inside a padded embedding (Qwen's
    151,936 rows hold 151,665 real tokens, so DeepSeek's markers land in its
    padding) or beyond it (the model grows) — start at the mean of the real tokens'
    rows `[0, new_ids.start)`. Padding rows were never trained as tokens and stay
    out of the mean.
    """
    vocab_size = vocab_size or max(cfg.vocab_size, new_ids.stop)
    if not 0 < new_ids.start <= cfg.vocab_size or new_ids.stop > vocab_size:
        raise ValueError(f"new ids {new_ids} do not follow the model's {cfg.vocab_size} rows "
                         f"within {vocab_size}")
    cfg, grown = resize_vocabulary(cfg, params, vocab_size)
    grown["embedding"] = _rows_to_mean(grown["embedding"], 0, new_ids.start, new_ids.stop)
    if not cfg.tie_word_embeddings:
        grown["lm_head"] = _rows_to_mean(grown["lm_head"], 1, new_ids.start, new_ids.stop)
    return cfg, grown


def _rows_to_mean(array, axis: int, first: int, end: int):
    """`array` with entries [first, end) along `axis` set to the mean of [0, first)."""
    def fill(xp, a):
        real = xp.take(a, xp.arange(first), axis=axis).astype(xp.float32)
        mean = xp.mean(real, axis=axis, keepdims=True).astype(a.dtype)
        index = xp.arange(a.shape[axis])
        shape = [1] * a.ndim
        shape[axis] = a.shape[axis]
        new = ((index >= first) & (index < end)).reshape(shape)
        return xp.where(new, mean, a)
    if not isinstance(array, jax.Array):
        return fill(np, np.asarray(array))
    return jax.jit(lambda a: fill(jnp, a), out_shardings=array.sharding)(array)
