"""The trainer's loss sums from final hidden states, one chunk of tokens at a time.

`chunked_loss_sums` returns what `Trainer._sums` computes from full logits --
`ce_sum` (Σ mask·CE), `correct` (Σ mask·[argmax = target]) and, with KD, `kd_sum`
-- but takes the final, already normalised hidden states [B, L, D] and the
LM-head kernel instead of logits, and never builds the [B, L, vocab] array.

Why: the head's logits are f32. At 32k tokens × 151,936 ids × 4 bytes one copy is
18.6 GiB, and training holds at least two (the logits and their gradient; an
online teacher adds its own, and softmax temporaries more). Here the tokens are cut
into chunks and a loop runs the head, the per-token losses and the sums one chunk
at a time. The backward pass is rematerialised by hand (a `jax.custom_vjp`): its
loop recomputes each chunk's logits and takes that chunk's `jax.vjp`, so no
logits are kept between the passes. Peak memory holds one chunk's
[rows, chunk, vocab] f32 logits and their gradient (one row × 1024 positions ×
151,936 ids: 0.58 GiB per copy), plus the kernel's f32 gradient accumulator. The
price is one more head matmul in the backward pass (two with an online teacher,
whose logits are recomputed too). Only reverse mode (`jax.grad`/`value_and_grad`)
is defined, not `jax.jvp`.

(A `scan` over a `jax.checkpoint`ed body with a `cond` skip was the first design.
Its backward `cond` has to return the chunk's residuals -- logits-sized buffers and a
kernel-sized one -- so a skipped chunk still writes them and a computed one copies the
kernel out of the branch. Loops of a traced trip count have no such outputs.)

The math is that of `losses` (`token_cross_entropy`, `kd_token_loss`,
`topk_kd_token_loss`), called on each chunk, and a chunk's logits are computed as
the model computes them (`Transformer.__call__`): `h.astype(compute_dtype)` times
`kernel.astype(compute_dtype)` with f32 accumulation. So the sums equal the
unchunked ones up to float summation order. The kernel is cast inside each chunk:
its gradient is accumulated over the chunks in the kernel's own dtype (f32 params:
f32), as one unchunked matmul would.

Chunk rules (all per row: the batch axis is kept, so a batch sharded over devices
stays sharded, and no token moves between rows or devices):
  * `chunk_size` counts positions along the length axis; a chunk holds
    batch × chunk_size tokens. `chunk_size <= 0` or `>= L` means one chunk of L.
  * L that `chunk_size` does not divide is padded up to a multiple with tokens of
    mask 0 (they add nothing to any sum or gradient).
  * Masked tokens are skipped: each row's tokens are stably reordered so those with
    mask > 0 come first (a gather of [B, L, D]; its gradient is a scatter back), and a
    chunk that starts at or after the largest per-row count of such tokens is not
    computed at all: both loops run ceil(that count / chunk_size) times (a traced
    trip count). Prompts and padding of a packed batch cost nothing, forward or
    backward.
  * Under batch (data/FSDP) sharding, each chunk's kernel gradient is summed over
    the batch shards where it is made (XLA places that reduction per chunk), so
    fewer, larger chunks mean fewer of these reductions.
  * Inside a computed chunk, tokens with mask 0 have their hidden rows, targets and
    teacher rows zeroed before any math, and their per-token values are removed with
    `jnp.where`: NaN or inf in masked positions cannot reach the sums or gradients.

KD (`kd` is a `trainer.KDSettings`, duck-typed: `.mode`, `.temperature`, `.kind`,
`.beta`):
  online   teacher logits come from `teacher_hidden` [B, L, Dt] and
           `teacher_head_kernel` chunk by chunk, under stop_gradient; both logit
           arrays are cut to the first `kd_vocab_size` ids (None: all, which needs one
           vocabulary size); kd_sum = Σ mask·kd_token_loss.
  offline  kd_sum = Σ over mask·kd_mask > 0 of topk_kd_token_loss (unweighted,
           exactly as the trainer sums it); rows outside that mask get neutral top-k
           entries before the math.
  on_policy the targets are the student's own samples; the teacher as for online;
           kd_sum = Σ mask·`losses.on_policy_token_terms`' loss (kind reverse_kl,
           forward_kl, jsd or sampled_token; sampled ids >= kd_vocab_size are left
           out of the sampled-token loss and counted in `unscored_tokens`), plus
           the metric sums reverse_kl_sum and teacher_logprob_sum, and with
           `sample_logprobs` (the sampler's) logprob_gap_sum = Σ mask·|log q(x) −
           sampler's|. Only kd_sum carries a gradient (CE and the metrics read the
           logits through stop_gradient).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.models.transformer import head_logits
from distill_jax.training import losses

HEAD_LAYOUTS = ("dv", "vd")    # see models.transformer.lm_head
KD_MODES = ("none", "online", "offline", "on_policy")
ON_POLICY_SUMS = ("reverse_kl_sum", "teacher_logprob_sum", "unscored_tokens")


def _chunk_sums(chunk: dict, head_kernel, teacher_head_kernel, *, mode: str, compute_dtype,
                head_layout: str, teacher_compute_dtype, teacher_head_layout: str,
                temperature: float, kind: str, beta: float, kd_vocab_size,
                sample_logprobs: bool = False) -> dict:
    """The sums of one chunk: every array in `chunk` is [rows, chunk, ...]
    (`sample_logprobs`: whether chunk carries them; only the keys list reads it)."""
    m = chunk["mask"]
    valid = m > 0
    h = jnp.where(valid[..., None], chunk["hidden"], jnp.zeros((), chunk["hidden"].dtype))
    targets = jnp.where(valid, chunk["targets"], 0)
    logits = head_logits(h, head_kernel, compute_dtype, head_layout)
    # On-policy, CE (of the student's own samples) is a metric, not part of the loss.
    ce = losses.token_cross_entropy(
        jax.lax.stop_gradient(logits) if mode == "on_policy" else logits, targets)
    hit = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    sums = {"ce_sum": jnp.sum(jnp.where(valid, ce * m, 0.0)),
            "correct": jnp.sum(jnp.where(valid, hit * m, 0.0))}
    if mode in ("online", "on_policy"):
        th = chunk["teacher_hidden"]
        th = jnp.where(valid[..., None], th, jnp.zeros((), th.dtype))
        teacher_logits = jax.lax.stop_gradient(
            head_logits(th, teacher_head_kernel, teacher_compute_dtype, teacher_head_layout))
        shared = kd_vocab_size
    if mode == "online":
        per_token = losses.kd_token_loss(logits[..., :shared], teacher_logits[..., :shared],
                                         temperature, kind, beta)
        sums["kd_sum"] = jnp.sum(jnp.where(valid, per_token * m, 0.0))
    elif mode == "on_policy":
        # A sampled id past the shared vocabulary has no teacher probability: the
        # sampled-token terms skip it (it is counted); a full-vocabulary divergence
        # does not depend on which id was drawn and keeps the position.
        scored = valid & (targets < shared)
        terms = losses.on_policy_token_terms(logits, teacher_logits[..., :shared],
                                             jnp.where(scored, targets, 0), temperature,
                                             kind, beta)

        def total(x, where):
            return jnp.sum(jnp.where(where, x * m, 0.0))
        sums.update(kd_sum=total(terms["loss"], scored if kind == "sampled_token" else valid),
                    reverse_kl_sum=total(terms["reverse_kl"], valid),
                    teacher_logprob_sum=total(terms["teacher_logprob"], scored),
                    unscored_tokens=jnp.sum(jnp.where(valid & ~scored, m, 0.0)))
        if "sample_logprobs" in chunk:     # what the sampler reported for the same tokens
            gap = jnp.abs(jax.lax.stop_gradient(-ce) - chunk["sample_logprobs"])
            sums["logprob_gap_sum"] = jnp.sum(jnp.where(valid, gap * m, 0.0))
    elif mode == "offline":
        kd_valid = chunk["kd_weight"] > 0
        ids = jnp.where(kd_valid[..., None], chunk["topk_ids"], 0)
        logprobs = jnp.where(kd_valid[..., None], chunk["topk_logprobs"], 0.0)
        per_token = losses.topk_kd_token_loss(logits, ids, logprobs, temperature)
        sums["kd_sum"] = jnp.sum(jnp.where(kd_valid, per_token, 0.0))
    return sums


def chunked_loss_sums(hidden: jax.Array, head_kernel: jax.Array, targets: jax.Array,
                      mask: jax.Array, *, chunk_size: int, compute_dtype=None,
                      head_layout: str = "dv", kd=None, teacher_hidden: jax.Array | None = None,
                      teacher_head_kernel: jax.Array | None = None, teacher_compute_dtype=None,
                      teacher_head_layout: str = "dv", kd_vocab_size: int | None = None,
                      topk_ids: jax.Array | None = None, topk_logprobs: jax.Array | None = None,
                      kd_mask: jax.Array | None = None,
                      sample_logprobs: jax.Array | None = None) -> dict[str, jax.Array]:
    """`Trainer._sums` from hidden states, chunk by chunk (see the module docstring).

    hidden [B, L, D]: the final-normed states. head_kernel: [D, V] with
    head_layout="dv" (`lm_head`), or [V, D] with "vd" (the embedding table of tied
    embeddings). targets [B, L] ints; mask [B, L] (loss_mask · (segment_ids > 0)).
    compute_dtype: the head matmul's input dtype (the model's `dtype`); None: hidden's.
    chunk_size: positions per row in a chunk (<= 0 or >= L: one chunk; padded up).
    kd: None or an object with .mode in none/online/offline, .temperature, .kind, .beta.
    Online: teacher_hidden [B, L, Dt], teacher_head_kernel ([Dt, Vt] or [Vt, Dt] by
    teacher_head_layout), teacher_compute_dtype (None: teacher_hidden's), and
    kd_vocab_size. Offline: topk_ids/topk_logprobs [B, L, K], kd_mask [B, L]
    (None: all ones).

    Returns {"ce_sum", "correct"} and, with KD, "kd_sum": f32 scalars.
    """
    mode = "none" if kd is None else kd.mode
    if mode not in KD_MODES:
        raise ValueError(f"kd.mode must be one of {KD_MODES}, got {mode!r}")
    for name, layout in (("head_layout", head_layout), ("teacher_head_layout",
                                                        teacher_head_layout)):
        if layout not in HEAD_LAYOUTS:
            raise ValueError(f"{name} must be one of {HEAD_LAYOUTS}, got {layout!r}")
    if hidden.ndim != 3:
        raise ValueError(f"hidden must be [batch, length, hidden], got shape {hidden.shape}")
    batch, length, _ = hidden.shape
    if targets.shape != (batch, length) or mask.shape != (batch, length):
        raise ValueError(f"targets {targets.shape} and mask {mask.shape} must both be "
                         f"{(batch, length)}, the first two axes of hidden")
    compute_dtype = hidden.dtype if compute_dtype is None else compute_dtype
    vocab = head_kernel.shape[1 if head_layout == "dv" else 0]

    mask = mask.astype(jnp.float32)
    per_row = {"hidden": hidden, "targets": targets.astype(jnp.int32), "mask": mask}
    settings = dict(mode=mode, compute_dtype=compute_dtype, head_layout=head_layout,
                    teacher_compute_dtype=None, teacher_head_layout=teacher_head_layout,
                    temperature=1.0, kind="forward_kl", beta=0.5, kd_vocab_size=None,
                    sample_logprobs=sample_logprobs is not None)
    if mode != "none":
        settings.update(temperature=float(kd.temperature), kind=kd.kind, beta=float(kd.beta))
    if mode in ("online", "on_policy"):
        if teacher_hidden is None or teacher_head_kernel is None:
            raise ValueError(f"{mode} KD needs teacher_hidden and teacher_head_kernel")
        if teacher_hidden.shape[:2] != (batch, length):
            raise ValueError(f"teacher_hidden {teacher_hidden.shape} must start with "
                             f"{(batch, length)}")
        teacher_vocab = teacher_head_kernel.shape[1 if teacher_head_layout == "dv" else 0]
        if kd_vocab_size is None:
            if teacher_vocab != vocab:
                raise ValueError(f"student ({vocab}) and teacher ({teacher_vocab}) vocabularies "
                                 "differ: pass kd_vocab_size, the shared leading ids")
            kd_vocab_size = vocab
        if not 0 < kd_vocab_size <= min(vocab, teacher_vocab):
            raise ValueError(f"kd_vocab_size must be in [1, {min(vocab, teacher_vocab)}], "
                             f"got {kd_vocab_size}")
        per_row["teacher_hidden"] = jax.lax.stop_gradient(teacher_hidden)
        settings.update(kd_vocab_size=int(kd_vocab_size),
                        teacher_compute_dtype=(teacher_hidden.dtype if teacher_compute_dtype
                                               is None else teacher_compute_dtype))
        if sample_logprobs is not None:
            per_row["sample_logprobs"] = jax.lax.stop_gradient(
                sample_logprobs.astype(jnp.float32))
    elif mode == "offline":
        if topk_ids is None or topk_logprobs is None:
            raise ValueError("offline KD needs topk_ids and topk_logprobs")
        kd_weight = mask if kd_mask is None else mask * kd_mask.astype(jnp.float32)
        per_row.update(kd_weight=kd_weight, topk_ids=topk_ids.astype(jnp.int32),
                       topk_logprobs=jax.lax.stop_gradient(topk_logprobs))

    chunk = length if chunk_size <= 0 or chunk_size >= length else int(chunk_size)
    n_chunks = -(-length // chunk)
    padded = n_chunks * chunk

    # Each row's mask > 0 tokens first (stable), then the rest; chunks past the longest
    # row's count of them hold only masked tokens and are skipped.
    valid = mask > 0
    order = jnp.argsort(jnp.logical_not(valid).astype(jnp.int32), axis=1, stable=True)
    n_valid = jnp.max(jnp.sum(valid, axis=1, dtype=jnp.int32))

    def to_chunks(x):
        idx = order.reshape(order.shape + (1,) * (x.ndim - 2))
        x = jnp.take_along_axis(x, idx, axis=1)
        if padded != length:
            x = jnp.pad(x, [(0, 0), (0, padded - length)] + [(0, 0)] * (x.ndim - 2))
        x = x.reshape(batch, n_chunks, chunk, *x.shape[2:])
        return jnp.moveaxis(x, 1, 0)           # [n_chunks, B, chunk, ...]

    aux = {k: to_chunks(v) for k, v in per_row.items()}
    hidden_chunks = aux.pop("hidden")
    n_computed = (n_valid + chunk - 1) // chunk
    return _chunk_loop(settings)(hidden_chunks, head_kernel, aux, teacher_head_kernel, n_computed)


def _zero_cotangent(tree):
    def zero(x):
        if jnp.issubdtype(x.dtype, jnp.inexact):
            return jnp.zeros_like(x)
        return np.zeros(x.shape, jax.dtypes.float0)
    return jax.tree_util.tree_map(zero, tree)


def _chunk_loop(settings: dict):
    """loop(hidden_chunks, kernel, aux, teacher_kernel, n_computed) -> sums over the first
    n_computed chunks, with a custom VJP that recomputes each chunk in the backward loop.

    hidden_chunks and every array of aux are [n_chunks, B, chunk, ...]. Both loops run
    `n_computed` (traced) times, so chunks past it cost nothing in either pass.
    """
    keys = ("ce_sum", "correct") + (("kd_sum",) if settings["mode"] != "none" else ())
    if settings["mode"] == "on_policy":
        keys += ON_POLICY_SUMS + (("logprob_gap_sum",) if settings["sample_logprobs"] else ())

    def chunk_at(tree, i):
        return jax.tree_util.tree_map(
            lambda x: jax.lax.dynamic_index_in_dim(x, i, 0, keepdims=False), tree)

    def sums_of(h, kernel, aux, teacher_kernel):
        return _chunk_sums(dict(aux, hidden=h), kernel, teacher_kernel, **settings)

    def forward(hidden, kernel, aux, teacher_kernel, n_computed):
        def body(i, acc):
            sums = sums_of(chunk_at(hidden, i), kernel, chunk_at(aux, i), teacher_kernel)
            return jax.tree_util.tree_map(jnp.add, acc, sums)
        zeros = {k: jnp.zeros((), jnp.float32) for k in keys}
        return jax.lax.fori_loop(0, n_computed, body, zeros)

    @jax.custom_vjp
    def loop(hidden, kernel, aux, teacher_kernel, n_computed):
        return forward(hidden, kernel, aux, teacher_kernel, n_computed)

    def loop_fwd(hidden, kernel, aux, teacher_kernel, n_computed):
        sums = forward(hidden, kernel, aux, teacher_kernel, n_computed)
        return sums, (hidden, kernel, aux, teacher_kernel, n_computed)

    def loop_bwd(residuals, cotangent):
        hidden, kernel, aux, teacher_kernel, n_computed = residuals

        def body(i, carry):
            d_hidden, d_kernel = carry
            aux_i = chunk_at(aux, i)
            _, vjp = jax.vjp(lambda h, w: sums_of(h, w, aux_i, teacher_kernel),
                             chunk_at(hidden, i), kernel)
            dh, dw = vjp(cotangent)
            return (jax.lax.dynamic_update_index_in_dim(d_hidden, dh, i, 0), d_kernel + dw)

        d_hidden, d_kernel = jax.lax.fori_loop(
            0, n_computed, body, (jnp.zeros_like(hidden), jnp.zeros_like(kernel)))
        return (d_hidden, d_kernel, _zero_cotangent(aux), _zero_cotangent(teacher_kernel),
                _zero_cotangent(n_computed))

    loop.defvjp(loop_fwd, loop_bwd)
    return loop
