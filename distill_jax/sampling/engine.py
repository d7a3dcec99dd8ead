"""The engine's device side: resident decode slots as one typed state, and the two
jitted functions that change it (a test can call each alone).

  DecodeState      per slot: its KV-cache row, the last drawn token (not yet in the
                   cache), its RoPE position and cache index, tokens drawn so far,
                   its own sampling settings and PRNG key, and whether it is active
  prefill_insert   prefills a batch of prompts (one length bucket, left-padded) and
                   copies each prompt's cache into the slots of its samples (n
                   samples of a prompt share one prefill), drawing each sample's
                   first token from the prefill's last logits
  decode_steps     up to K steps for every slot; stops early once `min_free` slots
                   the host has work for have finished, so they can be refilled

The host side (which sample goes to which slot, and when) is `scheduler.py`; the
driver and output unpacking are in `sampler.py`.

Why a sample does not depend on the schedule: sample j of prompt i draws its t-th
token with key fold_in(fold_in(fold_in(key(seed), prompt key), j), t), from logits
that depend only on its own prompt and tokens. Its prompt is prefilled in a batch
of one length bucket (its own), rows of a matrix product do not mix, and decode
attention gives a row the same bits whatever the other slots hold and however far
the step reads (`attention.cached_attention`). So the slot, the slot count, the
arrival order, the host and the scheduler never enter its numbers.

Settings are per slot and traced (SlotSettings): changing them never recompiles.
The programs are keyed by shapes only: decode_steps by (slots, slot length,
stop-id width, top-k width, cache window); prefill_insert by (slots, slot
length, stop-id width, top-k width, prompt bucket), its prompt batch and its
rows (one per slot) being fixed by the sampler.
"""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.models import kv_cache
from distill_jax.models.kv_cache import KVCache
from distill_jax.models.transformer import segment_positions
from distill_jax.sampling.logits_processing import choose_tokens

Array = jax.Array
# Decode steps per `decode_steps` call (fewer when slots free up with work waiting).
DECODE_STEPS = 32


@flax.struct.dataclass
class SlotSettings:
    """Sampling settings, one entry per slot (or per inserted row)."""

    temperature: Any       # float32 [S]; 0 = greedy
    top_k: Any             # int32 [S]; 0 = off
    top_p: Any             # float32 [S]
    min_p: Any             # float32 [S]
    max_new_tokens: Any    # int32 [S]
    stop_ids: Any          # int32 [S, stops]; -1 pads

    @classmethod
    def from_params(cls, params_per_row, stops: int) -> "SlotSettings":
        """Host arrays from one SamplingParams per row (stop ids padded to `stops`)."""
        stop_ids = np.full((len(params_per_row), stops), -1, np.int32)
        for r, p in enumerate(params_per_row):
            stop_ids[r, :len(p.stop_token_ids)] = p.stop_token_ids
        column = lambda name, dtype: np.asarray(  # noqa: E731
            [getattr(p, name) for p in params_per_row], dtype)
        return cls(temperature=column("temperature", np.float32),
                   top_k=column("top_k", np.int32), top_p=column("top_p", np.float32),
                   min_p=column("min_p", np.float32),
                   max_new_tokens=column("max_new_tokens", np.int32), stop_ids=stop_ids)

    @classmethod
    def idle(cls, rows: int, stops: int) -> "SlotSettings":
        return cls(temperature=np.zeros(rows, np.float32), top_k=np.zeros(rows, np.int32),
                   top_p=np.ones(rows, np.float32), min_p=np.zeros(rows, np.float32),
                   max_new_tokens=np.ones(rows, np.int32),
                   stop_ids=np.full((rows, stops), -1, np.int32))


@flax.struct.dataclass
class DecodeState:
    cache: KVCache          # [.., slots, .., slot_len]
    settings: SlotSettings
    keys: Any               # uint32 [S, key words]: the slot's sample key (key_data)
    token: Any              # int32 [S]: last drawn token, written to the cache next step
    position: Any           # int32 [S]: its RoPE position
    index: Any              # int32 [S]: the cache slot it goes to
    generated: Any          # int32 [S]: tokens drawn = the step index of the next draw
    active: Any             # bool [S]: drawing; False = free or finished
    stopped: Any            # bool [S]: finished on a stop id

    @classmethod
    def init(cls, cfg, num_slots: int, slot_len: int, stops: int) -> "DecodeState":
        """Every slot free, the cache empty (zeros: finite, as decode needs)."""
        zeros = jnp.zeros((num_slots,), jnp.int32)
        key_words = jax.random.key_data(jax.random.key(0)).shape[-1]
        settings = jax.tree_util.tree_map(jnp.asarray, SlotSettings.idle(num_slots, stops))
        state = cls(cache=KVCache.init(cfg, num_slots, slot_len), settings=settings,
                    keys=jnp.zeros((num_slots, key_words), jnp.uint32), token=zeros,
                    position=zeros, index=zeros, generated=zeros,
                    active=jnp.zeros((num_slots,), bool), stopped=jnp.zeros((num_slots,), bool))
        return constrain(state, state_axes(cfg))

    @property
    def num_slots(self) -> int:
        return self.token.shape[0]


@flax.struct.dataclass
class InsertBatch:
    """Prompts to prefill and the samples (rows) to start from them. Rows whose
    slot is >= the slot count are padding."""

    tokens: Any             # int32 [P, L], left-padded
    segment_ids: Any        # int32 [P, L]; 0 = padding
    source: Any             # int32 [R]: the prompt (row of tokens) of each sample
    slot: Any               # int32 [R]: where it goes
    seed: Any               # uint32 [R]
    prompt_key: Any         # uint32 [R]
    sample_index: Any       # uint32 [R]: j, the sample's index among its prompt's n
    settings: SlotSettings  # [R]


@flax.struct.dataclass
class Emitted:
    """Tokens drawn by a call, per slot (or inserted row) and step: [rows, steps]."""

    tokens: Any             # int32
    logprobs: Any           # float32: the model's raw log-probability of the token
    emitted: Any            # bool: the slot drew at this step
    top_ids: Any            # int32 [rows, steps, top_k_out]; None when top_k_out = 0
    top_logprobs: Any       # float32 [rows, steps, top_k_out]; None when top_k_out = 0

    @classmethod
    def zeros(cls, rows: int, steps: int, top_k_out: int) -> "Emitted":
        top = (lambda dtype: jnp.zeros((rows, steps, top_k_out), dtype)) if top_k_out else (
            lambda dtype: None)
        return cls(tokens=jnp.zeros((rows, steps), jnp.int32),
                   logprobs=jnp.zeros((rows, steps), jnp.float32),
                   emitted=jnp.zeros((rows, steps), bool), top_ids=top(jnp.int32),
                   top_logprobs=top(jnp.float32))


_ROW, _ROW_MATRIX = ("batch",), ("batch", None)


def state_axes(cfg) -> DecodeState:
    """Logical axes of every field: slots over the batch axes, the cache as the model's."""
    return DecodeState(
        cache=kv_cache.logical_axes(cfg),
        settings=SlotSettings(_ROW, _ROW, _ROW, _ROW, _ROW, _ROW_MATRIX),
        keys=_ROW_MATRIX, token=_ROW, position=_ROW, index=_ROW, generated=_ROW, active=_ROW,
        stopped=_ROW)


EMITTED_AXES = Emitted(_ROW_MATRIX, _ROW_MATRIX, _ROW_MATRIX, ("batch", None, None),
                       ("batch", None, None))


def constrain(tree, axes):
    """Logical sharding constraints on a state or Emitted (no-op without a mesh;
    absent fields, None, stay None)."""
    return jax.tree_util.tree_map(
        lambda x, a: x if x is None else nn.with_logical_constraint(x, a), tree, axes,
        is_leaf=lambda x: x is None)


def sample_keys(seed: Array, prompt_key: Array, sample_index: Array) -> Array:
    """[R] key data: fold_in(fold_in(key(seed), prompt key), j) per row."""
    def one(s, k, j):
        return jax.random.key_data(jax.random.fold_in(jax.random.fold_in(jax.random.key(s), k), j))
    return jax.vmap(one)(seed, prompt_key, sample_index)


def draw(logits: Array, keys: Array, step: Array, settings: SlotSettings, top_k_out: int,
         live: Array):
    """Each row's token at its own step: (token, its raw logprob, top-k ids and
    logprobs [R, top_k_out] or None, hit a stop id). Rows not `live` (idle slots,
    slots not being filled) draw greedily: their draw is discarded, and their
    settings must not make the batch filter or sort."""
    step_keys = jax.vmap(jax.random.fold_in)(jax.random.wrap_key_data(keys), step)
    token = choose_tokens(step_keys, logits, jnp.where(live, settings.temperature, 0.0),
                          settings.top_k, settings.top_p, settings.min_p)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    logprob = jnp.take_along_axis(log_probs, token[:, None], -1)[:, 0]
    top_logprobs = top_ids = None
    if top_k_out:
        top_logprobs, top_ids = jax.lax.top_k(log_probs, top_k_out)
    hit_stop = jnp.any(token[:, None] == settings.stop_ids, axis=-1)
    return token, logprob, top_ids, top_logprobs, hit_stop


def prefill_insert(model, params, state: DecodeState, batch: InsertBatch, top_k_out: int
                   ) -> tuple[DecodeState, Emitted]:
    """Prefills `batch`'s prompts, starts its rows in their slots and draws each
    one's first token; -> (state, Emitted [S, 1], emitted only by the new slots).

    The first draw runs on a [slots, vocab] array, the shape every decode step
    draws on, with the new rows' logits scattered to their slots: a draw's bits
    then never depend on how many rows arrived together.
    """
    prompts, prompt_len = batch.tokens.shape
    positions = segment_positions(batch.segment_ids)
    empty = KVCache.init(model.cfg, prompts, prompt_len, dtype=state.cache.k.dtype)
    logits, prefilled = model.apply({"params": params}, batch.tokens, positions,
                                    batch.segment_ids, empty, method="prefill")
    prompt_tokens = jnp.sum(batch.segment_ids > 0, axis=1)[batch.source].astype(jnp.int32)
    new_keys = sample_keys(batch.seed, batch.prompt_key, batch.sample_index)

    def put(field, rows):   # rows into their slots; padding rows write nothing
        return field.at[batch.slot].set(rows.astype(field.dtype), mode="drop")

    new = jnp.zeros((state.num_slots,), bool).at[batch.slot].set(True, mode="drop")
    settings = jax.tree_util.tree_map(put, state.settings, batch.settings)
    keys = put(state.keys, new_keys)
    slot_logits = put(jnp.zeros((state.num_slots, logits.shape[-1]), jnp.float32),
                      logits[batch.source])
    token, logprob, top_ids, top_logprobs, hit_stop = draw(
        slot_logits, keys, jnp.zeros((state.num_slots,), jnp.int32), settings, top_k_out, new)
    state = state.replace(
        cache=state.cache.insert(prefilled, batch.source, batch.slot),
        settings=settings, keys=keys, token=jnp.where(new, token, state.token),
        position=put(state.position, prompt_tokens),
        index=put(state.index, jnp.full_like(batch.slot, prompt_len)),
        generated=jnp.where(new, 1, state.generated),
        active=jnp.where(new, ~hit_stop & (settings.max_new_tokens > 1), state.active),
        stopped=jnp.where(new, hit_stop, state.stopped))
    steps_axis = lambda x: None if x is None else x[:, None]  # noqa: E731
    first = Emitted(tokens=token[:, None], logprobs=logprob[:, None], emitted=new[:, None],
                    top_ids=steps_axis(top_ids), top_logprobs=steps_axis(top_logprobs))
    return constrain(state, state_axes(model.cfg)), constrain(first, EMITTED_AXES)


def decode_steps(model, params, state: DecodeState, refill: Array, min_free: Array,
                 num_steps: int, top_k_out: int, window: int | None = None, pad_id: int = 0
                 ) -> tuple[DecodeState, Emitted, Array]:
    """Up to `num_steps` decode steps of every active slot -> (state, Emitted [S,
    num_steps], steps run). Stops early when no slot is active, when at least
    `min_free` slots with `refill` set (the host has work for them) are free, or
    before a step whose reads would pass the cache `window`.

    A step feeds each active slot's last token at its own position and cache index,
    reads the first `window` cache slots (static: whole blocks covering the longest
    active slot's fill through the call, chosen by the host; default all), and
    draws the next token; idle slots compute too (the shapes are fixed) but write
    and emit nothing.
    """
    window = state.cache.slots if window is None else window
    slot_len = state.cache.slots
    out = Emitted.zeros(state.num_slots, num_steps, top_k_out)

    def keep_going(carry):
        step, s, _ = carry
        free_to_refill = jnp.sum(refill & ~s.active)
        fits = jnp.all(~s.active | (s.index <= window))     # a step reads slots < index
        return (step < num_steps) & jnp.any(s.active) & (free_to_refill < min_free) & fits

    def one_step(carry):
        step, s, out = carry
        active = s.active
        index = jnp.where(active, s.index, slot_len)       # idle slots write nothing
        logits, cache = model.apply(
            {"params": params}, s.token[:, None], s.position[:, None],
            active.astype(jnp.int32)[:, None], s.cache, index, window, method="decode")
        token, logprob, top_ids, top_logprobs, hit_stop = draw(
            logits[:, 0], s.keys, s.generated, s.settings, top_k_out, active)
        generated = s.generated + active
        finished = hit_stop | (generated >= s.settings.max_new_tokens)
        moved = active.astype(jnp.int32)
        s = s.replace(cache=cache, token=jnp.where(active, token, s.token),
                      position=s.position + moved, index=s.index + moved, generated=generated,
                      active=active & ~finished, stopped=s.stopped | (active & hit_stop))
        out = out.replace(
            tokens=out.tokens.at[:, step].set(jnp.where(active, token, pad_id)),
            logprobs=out.logprobs.at[:, step].set(jnp.where(active, logprob, 0.0)),
            emitted=out.emitted.at[:, step].set(active))
        if top_k_out:
            out = out.replace(top_ids=out.top_ids.at[:, step].set(top_ids),
                              top_logprobs=out.top_logprobs.at[:, step].set(top_logprobs))
        return step + 1, s, out

    axes = state_axes(model.cfg)
    state = constrain(state, axes)
    steps, state, out = jax.lax.while_loop(keep_going, one_step, (jnp.int32(0), state, out))
    return constrain(state, axes), constrain(out, EMITTED_AXES), steps
