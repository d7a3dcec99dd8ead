"""Mixture-of-experts feed-forward (Qwen3-MoE, DeepSeek-V3/R1): the router, the
routed experts and the shared ones.

Routing (`route`) follows `MoeConfig.scoring`: softmax top-k (Qwen3-MoE) or
DeepSeek-V3's sigmoid scores with the correction bias and group-limited top-k.
It runs in float32 whatever the compute dtype (DeepSeek-V3 keeps its router in
float32; transformers' Qwen3-MoE computes it in the model dtype, so in bf16 a
near-tie can route differently from that reference): a routing decision that
flips on rounding changes a whole expert's output, not a rounding.

The routed experts are stacked kernels [experts, d, f] with the logical axis
"expert" first. Two ways to run them, both dropless (every token reaches its k
experts; no capacity factor, nothing dropped or padded per expert):

  ragged  the (token, expert) pairs sorted by expert, each expert's rows one
          group of `jax.lax.ragged_dot`: compute is tokens x k x d x f, whatever
          the expert count. With a mesh, under `shard_map`: each device gathers
          the tokens of its expert-axis peers, runs the experts it holds on the
          pairs routed to them, and the partial outputs are summed back and
          scattered to the tokens' owners (psum_scatter over "expert", psum over
          "tensor" for the f-sharded down projection). Simple and exact; an
          all-to-all that moves only the routed pairs would move k/E of this data
          and is the next step at pod scale (not implemented).
  dense   every expert on every token, weighted by the routing (zero for experts
          not chosen): E/k times the compute. The reference the tests compare
          the ragged path against, in values and gradients.

`load_balancing_loss` is the Switch-Transformer auxiliary loss (Qwen3-MoE's
`router_aux_loss_coef` form) per layer; `MoeBlock` sows it into the
"intermediates" collection, and the trainer adds coef x its mean over layers
when it trains an MoE student.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from distill_jax.models.config import ModelConfig, MoeConfig
from distill_jax.models.layers import Mlp, dtype, logical

Array = jax.Array
AUX_LOSS = "moe_aux_loss"   # name of the sown load-balancing loss


def route(logits: Array, correction_bias: Array | None, moe: MoeConfig) -> tuple[Array, Array]:
    """Router logits [T, E] (float32) -> (weights [T, k] float32, experts [T, k] int32)."""
    k = moe.experts_per_token
    if moe.scoring == "softmax":
        probs = jax.nn.softmax(logits, axis=-1)
        weights, experts = jax.lax.top_k(probs, k)
    else:
        scores = jax.nn.sigmoid(logits)
        choice = scores if correction_bias is None else scores + correction_bias
        if moe.num_groups > 1:
            tokens, per_group = logits.shape[0], moe.num_experts // moe.num_groups
            grouped = choice.reshape(tokens, moe.num_groups, per_group)
            group_scores = jax.lax.top_k(grouped, 2)[0].sum(-1)                    # [T, G]
            _, best_groups = jax.lax.top_k(group_scores, moe.topk_groups)
            allowed = jnp.zeros((tokens, moe.num_groups), bool).at[
                jnp.arange(tokens)[:, None], best_groups].set(True)
            choice = jnp.where(jnp.repeat(allowed, per_group, axis=1), choice, -jnp.inf)
        _, experts = jax.lax.top_k(choice, k)
        weights = jnp.take_along_axis(scores, experts, axis=-1)
    if moe.norm_topk_prob:
        weights = weights / (weights.sum(-1, keepdims=True)
                             + (1e-20 if moe.scoring == "sigmoid" else 0.0))
    return weights * moe.routed_scaling_factor, experts.astype(jnp.int32)


def load_balancing_loss(logits: Array, experts: Array, moe: MoeConfig) -> Array:
    """E * sum_e (tokens routed to e / tokens) x (mean router probability of e):
    k when the load is uniform; transformers' `load_balancing_loss_func` for one
    layer, which `aux_loss_coef` (router_aux_loss_coef) is calibrated against.
    Probabilities are the softmax for softmax scoring and the normalised sigmoid
    scores for sigmoid scoring. Every token counts (padding too: a packed batch
    has little)."""
    if moe.scoring == "softmax":
        probs = jax.nn.softmax(logits, axis=-1)
    else:
        scores = jax.nn.sigmoid(logits)
        probs = scores / scores.sum(-1, keepdims=True)
    counts = jnp.zeros((moe.num_experts,), jnp.float32).at[experts.reshape(-1)].add(1.0)
    share = counts / experts.shape[0]
    return moe.num_experts * jnp.sum(share * probs.mean(0))


def dense_experts(x: Array, weights: Array, experts: Array, gate: Array, up: Array,
                  down: Array) -> Array:
    """Reference: every expert on every token. x [T, d]; kernels [E, d, f] / [E, f, d]."""
    tokens, num_experts = x.shape[0], gate.shape[0]
    combine = jnp.zeros((tokens, num_experts), jnp.float32).at[
        jnp.arange(tokens)[:, None], experts].add(weights)
    h = jax.nn.silu(jnp.einsum("td,edf->tef", x, gate)) * jnp.einsum("td,edf->tef", x, up)
    y = jnp.einsum("tef,efd->ted", h, down, preferred_element_type=jnp.float32)
    return jnp.einsum("ted,te->td", y, combine).astype(x.dtype)


def ragged_experts(x: Array, weights: Array, experts: Array, gate: Array, up: Array,
                   down: Array, first_expert=0) -> Array:
    """Sorted dispatch through `jax.lax.ragged_dot`. The kernels may hold only
    experts first_expert .. first_expert + E_local - 1 (a device's shard): pairs
    routed elsewhere sort last, past every group, and their rows are zeroed. Returns
    the float32 sum over this shard's experts, [T, d]."""
    tokens, k = experts.shape
    local = gate.shape[0]
    slot = experts.reshape(-1) - first_expert
    mine = (slot >= 0) & (slot < local)
    slot = jnp.where(mine, slot, local)                        # elsewhere: after every group
    order = jnp.argsort(slot, stable=True)
    group_sizes = jnp.zeros((local + 1,), jnp.int32).at[slot].add(1)[:local]
    token_of = order // k
    rows = x[token_of]                                         # [T*k, d] grouped by expert
    h = (jax.nn.silu(jax.lax.ragged_dot(rows, gate, group_sizes))
         * jax.lax.ragged_dot(rows, up, group_sizes))
    out = jax.lax.ragged_dot(h, down, group_sizes, preferred_element_type=jnp.float32)
    # Rows past every group are zero in JAX's reference lowering; the accelerator
    # kernels' contract for them is not documented, so they are masked, not trusted.
    routed_here = mine[order]
    out = jnp.where(routed_here[:, None], out, 0.0)
    pair_weight = jnp.where(routed_here, weights.reshape(-1)[order], 0.0)
    return jnp.zeros((tokens, x.shape[-1]), jnp.float32).at[token_of].add(
        out * pair_weight[:, None])


def _mesh_axes(name: str) -> tuple[str, ...]:
    axes = nn.logical_to_mesh_axes((name,))[0]
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def sharded_experts(x: Array, weights: Array, experts: Array, gate: Array, up: Array,
                    down: Array) -> Array | None:
    """`ragged_experts` under shard_map over the current mesh (experts over the
    mesh axes of logical "expert", f over those of "mlp", tokens over those of
    "batch"); None when no mesh is current, or, without expert parallelism, when
    the tokens or f do not divide (GSPMD then partitions the plain path). With
    experts split over the mesh that fallback would gather every expert of the
    layer onto each device, so it is an error instead."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return None
    batch, expert, mlp = _mesh_axes("batch"), _mesh_axes("expert"), _mesh_axes("mlp")
    size = lambda axes: math.prod(mesh.shape[a] for a in axes)  # noqa: E731
    ep = size(expert)
    # The psum over "mlp" adds partial sums of one token's f shards: it needs the
    # mlp axes disjoint from the token (batch) axes, as LOGICAL_RULES has them.
    fits = (not x.shape[0] % size(batch) and not gate.shape[0] % ep
            and not gate.shape[2] % size(mlp) and not set(mlp) & set(batch))
    if not fits:
        if ep > 1:
            raise ValueError(
                f"MoE layer on mesh {dict(mesh.shape)}: {x.shape[0]} tokens over batch axes "
                f"{batch}, {gate.shape[0]} experts over {expert}, f={gate.shape[2]} over {mlp}: "
                "each must divide evenly (and mlp must not share a mesh axis with batch); "
                "change the batch (rows per microbatch) or the mesh")
        return None
    rows, kernel_in, kernel_out = P(batch or None, None), P(expert or None, None, mlp or None), \
        P(expert or None, mlp or None, None)

    def local(x, weights, experts, gate, up, down):
        if ep > 1:   # every token of this expert group, to run this device's experts on
            x, weights, experts = (jax.lax.all_gather(a, expert, axis=0, tiled=True)
                                   for a in (x, weights, experts))
            first = jax.lax.axis_index(expert) * gate.shape[0]
        else:
            first = 0
        y = ragged_experts(x, weights, experts, gate, up, down, first)
        if mlp:
            y = jax.lax.psum(y, mlp)
        if ep > 1:
            y = jax.lax.psum_scatter(y, expert, scatter_dimension=0, tiled=True)
        return y

    return jax.shard_map(local, mesh=mesh, in_specs=(rows, rows, rows, kernel_in, kernel_in,
                                                     kernel_out),
                         out_specs=rows, check_vma=False)(x, weights, experts, gate, up, down)


class MoeBlock(nn.Module):
    """Router + routed experts (+ shared experts): [B, L, d] -> [B, L, d]."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg, moe = self.cfg, self.cfg.moe
        cdtype, pdtype = dtype(cfg.dtype), dtype(cfg.param_dtype)
        init = nn.initializers.normal(cfg.initializer_range)
        d, f, e = cfg.hidden_size, moe.expert_intermediate_size, moe.num_experts
        # The router stays float32 (see the module docstring).
        router = self.param("router_kernel", logical(init, ("embed", None)), (d, e), jnp.float32)
        bias = None
        if moe.scoring == "sigmoid":
            bias = self.param("router_bias", logical(nn.initializers.zeros, (None,)), (e,),
                              jnp.float32)
        gate = self.param("gate_kernel", logical(init, ("expert", "embed", "mlp")), (e, d, f),
                          pdtype).astype(cdtype)
        up = self.param("up_kernel", logical(init, ("expert", "embed", "mlp")), (e, d, f),
                        pdtype).astype(cdtype)
        down = self.param("down_kernel", logical(init, ("expert", "mlp", "embed")), (e, f, d),
                          pdtype).astype(cdtype)

        tokens = x.reshape(-1, d)
        logits = jnp.dot(tokens.astype(jnp.float32), router)
        weights, experts = route(logits, bias, moe)
        self.sow("intermediates", AUX_LOSS, load_balancing_loss(logits, experts, moe))
        if moe.dispatch == "dense":
            y = dense_experts(tokens, weights, experts, gate, up, down)
        else:
            y = sharded_experts(tokens, weights, experts, gate, up, down)
            if y is None:
                y = ragged_experts(tokens, weights, experts, gate, up, down)
        y = y.astype(cdtype).reshape(x.shape)
        if moe.num_shared_experts:
            y = y + Mlp(cfg, moe.shared_intermediate_size, name="shared")(x)
        return nn.with_logical_constraint(y, ("batch", "length", "embed"))
