"""Losses on [batch, length, vocab] logits. All math in float32.

Per-token functions return [batch, length]; the `*_loss` wrappers average over
the positions `mask` selects. The trainer sums per-token losses over the whole
global batch and divides once by its number of target tokens, so gradient
accumulation gives the same loss as one big batch (never a mean of means).

KD is on temperature-softened distributions p_T = softmax(teacher / T) and
q_T = softmax(student / T), scaled by T² so its gradients keep their size as T
changes (Hinton et al., 2015):
  forward_kl  KL(p_T ‖ q_T)                (mode-covering; the classic soft target)
  reverse_kl  KL(q_T ‖ p_T)                (mode-seeking)
  jsd         β·KL(p_T ‖ M) + (1−β)·KL(q_T ‖ M),  M = β·p_T + (1−β)·q_T, β in (0, 1)

Offline top-k KD (`topk_kd_token_loss`): the sampler stored the teacher's K
largest log-probabilities per generated token. The teacher distribution is
renormalized over those K ids, p_T(i) = exp(lp_i / T) / Σ_k exp(lp_k / T), and
zero elsewhere; the student keeps its full-vocabulary q_T. The loss is
KL(p_T ‖ q_T) = Σ_i p_T(i) (log p_T(i) − log q_T(i)) over the K ids: a proper KL,
zero only when the student puts exactly the renormalized teacher mass on them.

On-policy distillation (`on_policy_token_terms`): the tokens are the student's own
samples x_t. Either a full-vocabulary divergence above at each sampled position
(GKD; reverse_kl is the on-policy reverse KL), or the sampled-token estimator:
advantage A_t = log p(x_t) − log q(x_t) (teacher minus student, T = 1, a
constant), loss −A_t · log q(x_t), whose gradient is the per-token policy
gradient with discount 0 (Thinking Machines' on-policy distillation, NeMo-RL's
MOPD). Its reported value is −A_t, the single-sample estimate of KL(q ‖ p).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

KD_KINDS = ("forward_kl", "reverse_kl", "jsd")
ON_POLICY_KINDS = KD_KINDS + ("sampled_token",)


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """-log softmax(logits)[target], [batch, length]."""
    logits = logits.astype(jnp.float32)
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return logz - picked


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    mask = mask.astype(jnp.float32)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean token cross-entropy over the positions `mask` selects."""
    return _masked_mean(token_cross_entropy(logits, targets), mask)


def _kl(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """KL(p ‖ q) over the last axis, with 0·log 0 = 0."""
    p = jnp.exp(log_p)
    return jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)


def kd_token_loss(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float = 1.0,
                  kind: str = "forward_kl", beta: float = 0.5) -> jax.Array:
    """Per-token KD loss (T²-scaled), [batch, length]."""
    if kind not in KD_KINDS:
        raise ValueError(f"unknown KD kind {kind!r}; choose from {KD_KINDS}")
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(f"KD needs one vocabulary: student logits have "
                         f"{student_logits.shape[-1]} entries, teacher {teacher_logits.shape[-1]}")
    t = jnp.float32(temperature)
    log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
    log_p = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t, axis=-1)
    if kind == "forward_kl":
        loss = _kl(log_p, log_q)
    elif kind == "reverse_kl":
        loss = _kl(log_q, log_p)
    else:
        if not 0.0 < beta < 1.0:
            raise ValueError(f"jsd needs beta in (0, 1), got {beta}")
        log_m = jnp.logaddexp(jnp.log(beta) + log_p, jnp.log1p(-beta) + log_q)
        loss = beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)
    return loss * t * t


def kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, mask: jax.Array,
            temperature: float = 1.0, kind: str = "forward_kl", beta: float = 0.5) -> jax.Array:
    """Mean KD loss over the positions `mask` selects (the completion tokens)."""
    return _masked_mean(kd_token_loss(student_logits, teacher_logits, temperature, kind, beta),
                        mask)


def topk_kd_token_loss(student_logits: jax.Array, topk_ids: jax.Array,
                       topk_logprobs: jax.Array, temperature: float = 1.0) -> jax.Array:
    """Forward KL to the renormalized top-k teacher (see module docstring), T²-scaled.

    topk_ids/topk_logprobs: [batch, length, K]; -inf logprobs mark unused slots.
    """
    t = jnp.float32(temperature)
    # log softmax(z / T) at the K ids only: gather K logits and subtract one logsumexp,
    # instead of materializing the [batch, length, vocab] log-softmax (and its gradient).
    logits = student_logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits / t, axis=-1, keepdims=True)
    log_q_k = jnp.take_along_axis(logits, topk_ids.astype(jnp.int32), axis=-1) / t - log_z
    scaled = topk_logprobs.astype(jnp.float32) / t
    # A row with no teacher entries (all -inf) would give NaN; it is masked anyway.
    safe = jnp.where(jnp.isfinite(scaled).any(-1, keepdims=True), scaled, 0.0)
    log_p = jax.nn.log_softmax(safe, axis=-1)
    p = jnp.exp(log_p)
    return jnp.sum(jnp.where(p > 0, p * (log_p - log_q_k), 0.0), axis=-1) * t * t


def on_policy_token_terms(student_logits: jax.Array, teacher_logits: jax.Array,
                          targets: jax.Array, temperature: float = 1.0,
                          kind: str = "reverse_kl", beta: float = 0.5) -> dict[str, jax.Array]:
    """Per-token terms of on-policy distillation at the student's sampled tokens.

    student_logits [B, L, V] (its whole vocabulary: what it sampled from);
    teacher_logits [B, L, Vs], Vs <= V the ids both models share (the student's are
    cut to them for every comparison); targets [B, L] the sampled ids, each < Vs
    (a caller masks the others). The teacher is a constant here: callers pass it
    under stop_gradient. Returns [B, L] arrays:
      loss             the per-token loss of `kind` (see the module docstring)
      reverse_kl       KL(q ‖ p) over the shared ids at T = 1 (the metric)
      teacher_logprob  log p(x_t) over the shared ids
      student_logprob  log q(x_t) over the student's whole vocabulary
    """
    if kind not in ON_POLICY_KINDS:
        raise ValueError(f"unknown on-policy kind {kind!r}; choose from {ON_POLICY_KINDS}")
    shared = teacher_logits.shape[-1]
    ids = targets[..., None].astype(jnp.int32)
    # Only `loss` carries a gradient: the metrics read the student's logits through
    # stop_gradient, so the backward pass keeps no buffers for them.
    fixed = jax.lax.stop_gradient(student_logits).astype(jnp.float32)
    log_q = jax.nn.log_softmax(fixed[..., :shared], axis=-1)
    log_p = jax.nn.log_softmax(teacher_logits.astype(jnp.float32), axis=-1)
    student_lp = jnp.take_along_axis(jax.nn.log_softmax(fixed, axis=-1), ids, axis=-1)[..., 0]
    teacher_lp = jnp.take_along_axis(log_p, ids, axis=-1)[..., 0]
    if kind == "sampled_token":
        advantage = teacher_lp - student_lp                  # a constant
        live_lp = -token_cross_entropy(student_logits, targets)
        # Value −A (the sampled reverse-KL estimate), gradient −A·∇log q(x).
        loss = -advantage * (live_lp - jax.lax.stop_gradient(live_lp)) - advantage
    else:
        loss = kd_token_loss(student_logits[..., :shared], teacher_logits, temperature, kind, beta)
    return {"loss": loss, "reverse_kl": _kl(log_q, log_p), "teacher_logprob": teacher_lp,
            "student_logprob": student_lp}


def token_accuracy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    hit = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return _masked_mean(hit, mask)
