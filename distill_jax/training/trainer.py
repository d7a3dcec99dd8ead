"""The student's training step: one jitted, sharded function per run.

`TrainState` (step, params, optimizer state) is a pytree; `Trainer.step` takes
it (donated) and a global batch, and returns the next state and metrics. The
batch's rows are split into `microbatches` inside the step; per-token losses
are summed over all of them and divided once by the global batch's number of
target tokens, so accumulation gives the update one big batch would.

Params and optimizer state are sharded by the model's logical axes (FSDP over
`fsdp`, tensor parallelism over `tensor`); the batch over (`data`, `fsdp`).
The step states `in_shardings`/`out_shardings` explicitly. Params are kept in
`param_dtype` (fp32 by default) and the forward runs in `dtype` (bf16 by
default); gradients and optimizer state follow the params.

Soft-target KD (config `kd.mode`):
  "online"  the teacher runs forward inside the same step on the same mesh
            (its params sharded by the same rules, no gradients);
  "offline" the batch carries the teacher's stored top-k logprobs.
Loss = α·KD + (1−α)·CE, each the mean over its target tokens in the global batch.
  "on_policy" the batch holds the student's own samples (training/on_policy.py);
            the teacher runs forward as for "online", and the loss is the on-policy
            term alone (`losses.on_policy_token_terms`), the mean over the sampled
            tokens (α is not used: CE on one's own samples would only sharpen the
            student).

One Trainer compiles one step per KDSettings it is called with: an on-policy run
that mixes in off-policy batches (GKD's λ < 1) calls it with both.

The loss never sees [tokens, vocab] logits: the models return their final hidden
states and `chunked_loss.chunked_loss_sums` runs both LM heads and every loss
`loss_chunk_size` positions per row at a time, skipping prompt and padding
tokens (0 = one chunk, which is the plain full-logits computation).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from distill_jax import models, sharding
from distill_jax.training import losses
from distill_jax.training.chunked_loss import KD_MODES, chunked_loss_sums
from distill_jax.training.kd_vocab import check_vocabularies

BATCH_FIELDS = ("inputs", "targets", "loss_mask", "segment_ids", "positions")
KD_FIELDS = ("kd_mask", "topk_ids", "topk_logprobs")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class KDSettings:
    mode: str = "none"            # none | online | offline | on_policy
    alpha: float = 0.5
    temperature: float = 1.0
    kind: str = "forward_kl"
    beta: float = 0.5

    def __post_init__(self):
        if self.mode not in KD_MODES:
            raise ValueError(f"kd.mode must be one of {KD_MODES}, got {self.mode!r}")
        if self.mode != "none":
            if not 0.0 <= self.alpha <= 1.0:
                raise ValueError(f"kd.alpha must be in [0, 1], got {self.alpha}")
            if self.temperature <= 0:
                raise ValueError(f"kd.temperature must be > 0, got {self.temperature}")
            kinds = losses.ON_POLICY_KINDS if self.mode == "on_policy" else losses.KD_KINDS
            if self.kind not in kinds:
                raise ValueError(f"kd.kind must be one of {kinds} for kd.mode={self.mode!r}, "
                                 f"got {self.kind!r}")
        if self.kind == "sampled_token" and self.temperature != 1.0:
            raise ValueError("kd.kind='sampled_token' scores the sampled tokens at T = 1; "
                             f"kd.temperature={self.temperature} would change nothing: set 1.0")
        if self.kind == "jsd" and self.mode != "none" and not 0.0 < self.beta < 1.0:
            raise ValueError(f"kd.kind='jsd' needs kd.beta in (0, 1), got {self.beta}")
        if self.mode == "offline" and self.kind != "forward_kl":
            raise ValueError("offline top-k KD supports kind='forward_kl' only: the stored top-k "
                             "logprobs do not define the teacher's full distribution")


def train_state_shardings(tx: optax.GradientTransformation, state: TrainState, param_shardings,
                          mesh: jax.sharding.Mesh) -> TrainState:
    """Shardings of every leaf of `state` (arrays or ShapeDtypeStructs).

    Each optimizer leaf that is a copy of the parameter tree (Adam's moments) takes
    the sharding of its own parameter, found by its place in the tree and never by
    its shape: kernels of one shape can have different logical axes (gate [L, d, f]
    and down [L, f, d] when d == f). Everything else (step, counts) is replicated.
    """
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    opt_state = optax.tree_map_params(tx, lambda _, param_sharding: param_sharding,
                                      state.opt_state, param_shardings,
                                      transform_non_params=lambda _: replicated)
    return TrainState(step=replicated, params=param_shardings, opt_state=opt_state)


class Trainer:
    """Builds the jitted step for a student (and optional online teacher) on a mesh."""

    def __init__(self, cfg: models.ModelConfig, tx: optax.GradientTransformation,
                 schedule: optax.Schedule, mesh: jax.sharding.Mesh | None = None,
                 microbatches: int = 1, kd: KDSettings = KDSettings(),
                 teacher_cfg: models.ModelConfig | None = None,
                 kd_vocab_size: int | None = None, loss_chunk_size: int = 0):
        """`kd_vocab_size` (online KD only): the leading token ids the KL is computed
        over, from `kd_vocab.shared_kd_vocabulary`; None requires both models to have
        one vocab_size and uses all of it. `loss_chunk_size`: positions per row of
        one loss chunk (0: all; a size that does not divide the row is padded up)."""
        if isinstance(loss_chunk_size, bool) or not isinstance(loss_chunk_size, int) \
                or loss_chunk_size < 0:
            raise ValueError(f"train.loss_chunk_size must be an int >= 0 (0 = no chunking), "
                             f"got {loss_chunk_size!r}")
        self.cfg, self.tx, self.schedule, self.mesh = cfg, tx, schedule, mesh
        self.microbatches = microbatches
        self.loss_chunk_size = loss_chunk_size
        self.kd = kd
        # An MoE student adds its router's load-balancing loss (models/moe.py), weighted
        # by the checkpoint's router_aux_loss_coef (cfg.moe.aux_loss_coef; 0 = off).
        self.moe_aux_coef = cfg.moe.aux_loss_coef if cfg.moe is not None else 0.0
        self.model = models.Transformer(cfg)
        self.teacher_cfg = teacher_cfg
        self.kd_vocab_size = None
        if kd.mode in ("online", "on_policy"):
            if teacher_cfg is None:
                raise ValueError(f"kd.mode={kd.mode!r} needs a teacher model")
            self.kd_vocab_size = check_vocabularies(cfg, teacher_cfg, kd_vocab_size)
            self.teacher = models.Transformer(teacher_cfg)
        # The jitted programs: a step per KDSettings, and ("score", KDSettings).
        self._steps: dict[Any, Any] = {}

    # ------------------------------------------------------------ state

    def param_shardings(self, cfg: models.ModelConfig | None = None):
        cfg = cfg or self.cfg
        if self.mesh is None:
            return None
        return sharding.logical_to_shardings(models.param_logical_axes(cfg), self.mesh,
                                             shapes=models.param_shapes(cfg))

    def _unsharded_abstract_state(self) -> TrainState:
        return jax.eval_shape(lambda p: TrainState(jnp.zeros((), jnp.int32), p, self.tx.init(p)),
                              models.param_shapes(self.cfg))

    def state_shardings(self) -> TrainState | None:
        """The shardings of every state leaf (`train_state_shardings`); None
        without a mesh. `init_state` and `abstract_state` both place the state by
        this, so a restored checkpoint lands exactly where a fresh state would."""
        if self.mesh is None:
            return None
        return train_state_shardings(self.tx, self._unsharded_abstract_state(),
                                     self.param_shardings(), self.mesh)

    def init_state(self, params) -> TrainState:
        """A fresh state around `params` (normally already placed: see
        `models.init_params(mesh=)`; params placed otherwise are moved)."""
        shardings = self.state_shardings()
        if shardings is None:
            # Committed to one device, as the step's outputs are: otherwise params
            # loaded from a checkpoint (uncommitted) compile the step a second time
            # at step 2, when the state comes back committed.
            device = jax.devices()[0]
            params = jax.device_put(params, device)
            return jax.device_put(TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                             opt_state=jax.jit(self.tx.init)(params)), device)
        params = jax.device_put(params, shardings.params)      # a no-op when already placed
        with sharding.mesh_context(self.mesh):
            opt_state = jax.jit(self.tx.init, out_shardings=shardings.opt_state)(params)
        step = jax.device_put(jnp.zeros((), jnp.int32), shardings.step)
        return TrainState(step=step, params=params, opt_state=opt_state)

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and shardings of the state, for restoring a checkpoint."""
        state = self._unsharded_abstract_state()
        shardings = self.state_shardings()
        if shardings is None:
            return state
        return jax.tree_util.tree_map(
            lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), state, shardings)

    # ------------------------------------------------------------ the step

    def _sums(self, params, mb, teacher_params, kd: KDSettings):
        def hidden(model, p):
            return model.apply({"params": p}, mb["inputs"], positions=mb["positions"],
                               segment_ids=mb["segment_ids"], method="hidden_states")

        def student_hidden():
            """The student's hidden states and, for an MoE student, the mean over its
            MoE layers of the load-balancing loss they sow."""
            if not self.moe_aux_coef:
                return hidden(self.model, params), None
            h, state = self.model.apply(
                {"params": params}, mb["inputs"], positions=mb["positions"],
                segment_ids=mb["segment_ids"], method="hidden_states", mutable=["intermediates"])
            losses = [jnp.ravel(x) for x in jax.tree_util.tree_leaves(state["intermediates"])]
            return h, jnp.mean(jnp.concatenate(losses))

        mask = (mb["loss_mask"] * (mb["segment_ids"] > 0)).astype(jnp.float32)
        kernel, layout = models.lm_head(params, self.cfg)
        extra = {}
        if kd.mode in ("online", "on_policy"):
            # Ids past kd_vocab_size are padding (or tokens only one side has): both
            # sides' logits are cut to them, so each softmax renormalises over them.
            teacher_kernel, teacher_layout = models.lm_head(teacher_params, self.teacher_cfg)
            # chunked_loss_sums stops the teacher's gradient (hidden states and head).
            extra = dict(teacher_hidden=hidden(self.teacher, teacher_params),
                         teacher_head_kernel=teacher_kernel, teacher_head_layout=teacher_layout,
                         teacher_compute_dtype=jnp.dtype(self.teacher_cfg.dtype),
                         kd_vocab_size=self.kd_vocab_size)
            if kd.mode == "on_policy" and "sample_logprobs" in mb:
                extra["sample_logprobs"] = mb["sample_logprobs"]
        elif kd.mode == "offline":
            extra = dict(topk_ids=mb["topk_ids"], topk_logprobs=mb["topk_logprobs"],
                         kd_mask=mb["kd_mask"])
        student, aux = student_hidden()
        sums = chunked_loss_sums(student, kernel, mb["targets"], mask,
                                 chunk_size=self.loss_chunk_size,
                                 compute_dtype=jnp.dtype(self.cfg.dtype), head_layout=layout,
                                 kd=None if kd.mode == "none" else kd, **extra)
        if aux is not None:
            sums["moe_aux_sum"] = aux
        return sums

    @staticmethod
    def _loss(kd: KDSettings, ce, kd_mean):
        """The objective from its means: CE, α·KD + (1−α)·CE, or (on-policy) KD alone."""
        if kd.mode == "none":
            return ce
        if kd.mode == "on_policy":
            return kd_mean
        return kd.alpha * kd_mean + (1.0 - kd.alpha) * ce

    def _objective(self, params, mb, teacher_params, n_ce, n_kd, kd: KDSettings):
        sums = self._sums(params, mb, teacher_params, kd)
        loss = self._loss(kd, sums["ce_sum"] / n_ce, sums.get("kd_sum", 0.0) / n_kd)
        if "moe_aux_sum" in sums:   # a mean per microbatch: the step's is their mean
            loss = loss + self.moe_aux_coef * sums["moe_aux_sum"] / self.microbatches
        return loss, sums

    def _split(self, batch):
        """[B, ...] -> [microbatches, B / microbatches, ...], row r to microbatch r % m, so
        every microbatch spans all data-parallel shards."""
        m = self.microbatches

        def split(x):
            rows = x.shape[0]
            if rows % m:
                raise ValueError(f"batch of {rows} rows does not split into {m} microbatches")
            y = x.reshape(rows // m, m, *x.shape[1:])
            return jnp.swapaxes(y, 0, 1)
        return jax.tree_util.tree_map(split, batch)

    def _constrain(self, mb):
        """A microbatch's rows stay split over the batch axes (a no-op without a mesh)."""
        if self.mesh is None:
            return mb
        return jax.tree_util.tree_map(lambda x: jax.lax.with_sharding_constraint(
            x, sharding.batch_sharding(self.mesh, x.ndim)), mb)

    @staticmethod
    def _counts(kd: KDSettings, batch):
        """(target mask, CE tokens, KD tokens) of the global batch: every mean divides
        by one of these once."""
        mask = (batch["loss_mask"] * (batch["segment_ids"] > 0)).astype(jnp.float32)
        n_ce = jnp.maximum(jnp.sum(mask), 1.0)
        n_kd = n_ce
        if kd.mode == "offline":
            n_kd = jnp.maximum(jnp.sum(mask * batch["kd_mask"]), 1.0)
        return mask, n_ce, n_kd

    def _train_step(self, state: TrainState, batch, teacher_params,
                    kd: KDSettings | None = None):
        """The step `step` jits (kd None: the Trainer's; the benchmarks lower it)."""
        kd = kd or self.kd
        mask, n_ce, n_kd = self._counts(kd, batch)
        grad_fn = jax.value_and_grad(self._objective, has_aux=True)

        def body(grads, mb):
            mb = self._constrain(mb)
            (_, sums), g = grad_fn(state.params, mb, teacher_params, n_ce, n_kd, kd)
            return jax.tree_util.tree_map(jnp.add, grads, g), sums

        zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
        grads, sums = jax.lax.scan(body, zeros, self._split(batch))
        sums = jax.tree_util.tree_map(jnp.sum, sums)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = self._metrics(kd, sums, n_ce, n_kd, mask, batch)
        metrics.update(grad_norm=optax.global_norm(grads), learning_rate=self.schedule(state.step))
        return TrainState(state.step + 1, params, opt_state), metrics

    def _metrics(self, kd: KDSettings, sums, n_ce, n_kd, mask, batch) -> dict:
        """A step's metrics from its summed terms (the means over the batch's tokens)."""
        ce = sums["ce_sum"] / n_ce
        metrics = {"ce": ce, "accuracy": sums["correct"] / n_ce,
                   "target_tokens": jnp.sum(mask), "tokens": jnp.sum(batch["segment_ids"] > 0)}
        if kd.mode != "none":
            metrics["kd"] = sums["kd_sum"] / n_kd
        metrics["loss"] = self._loss(kd, ce, metrics.get("kd"))
        if kd.mode == "on_policy":
            # Means over the sampled tokens: KL(student ‖ teacher) over the shared ids,
            # the teacher's log-probability of the student's tokens, and how far the
            # sampler's logprobs are from this step's forward pass (~0: the samples
            # came from these very params).
            metrics.update(reverse_kl=sums["reverse_kl_sum"] / n_kd,
                           teacher_logprob=sums["teacher_logprob_sum"] / n_kd,
                           student_logprob=-ce, unscored_tokens=sums["unscored_tokens"])
            if "logprob_gap_sum" in sums:
                metrics["logprob_gap"] = sums["logprob_gap_sum"] / n_kd
        if "moe_aux_sum" in sums:
            metrics["moe_aux"] = sums["moe_aux_sum"] / self.microbatches
            metrics["loss"] = metrics["loss"] + self.moe_aux_coef * metrics["moe_aux"]
        return metrics

    def _score(self, params, batch, teacher_params, kd: KDSettings):
        """The step's metrics without the update: the same microbatches (so the same
        peak memory as the step's forward), no gradient."""
        mask, n_ce, n_kd = self._counts(kd, batch)

        def body(_, mb):
            return None, self._sums(params, self._constrain(mb), teacher_params, kd)
        _, sums = jax.lax.scan(body, None, self._split(batch))
        sums = jax.tree_util.tree_map(jnp.sum, sums)
        return self._metrics(kd, sums, n_ce, n_kd, mask, batch)

    def score(self, params, batch, teacher_params=None, kd: KDSettings | None = None) -> dict:
        """The metrics a step would report on `batch` with `params`, without training
        (held-out evaluation; the benchmark's teacher-scoring time). Compiled once per
        KDSettings and batch shape."""
        kd = kd or self.kd
        if self.mesh is not None and isinstance(next(iter(batch.values())), np.ndarray):
            batch = sharding.shard_batch(batch, self.mesh)
        if ("score", kd) not in self._steps:
            self._steps[("score", kd)] = jax.jit(functools.partial(self._score, kd=kd))
        with sharding.mesh_context(self.mesh):
            return self._steps[("score", kd)](params, batch, teacher_params)

    def compile(self, state: TrainState, batch, teacher_params=None, kd: KDSettings | None = None):
        """Jits the step for `kd` (default: the Trainer's) with explicit shardings
        (from the placed state and teacher)."""
        kd = kd or self.kd
        step = functools.partial(self._train_step, kd=kd)
        if self.mesh is None:
            self._steps[kd] = jax.jit(step, donate_argnums=(0,))
            return
        state_sh = jax.tree_util.tree_map(lambda x: x.sharding, state)
        batch_sh = {k: sharding.batch_sharding(self.mesh, np.ndim(v)) for k, v in batch.items()}
        teacher_sh = None if teacher_params is None else jax.tree_util.tree_map(
            lambda x: x.sharding, teacher_params)
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self._steps[kd] = jax.jit(step, in_shardings=(state_sh, batch_sh, teacher_sh),
                                  out_shardings=(state_sh, replicated), donate_argnums=(0,))

    def step(self, state: TrainState, batch, teacher_params=None, kd: KDSettings | None = None):
        """One optimizer step on a global batch (numpy rows of this host, or global
        arrays), with the loss of `kd` (default: the Trainer's own)."""
        kd = kd or self.kd
        if kd.mode in ("online", "on_policy") and self.kd.mode not in ("online", "on_policy"):
            raise ValueError(f"a step with kd.mode={kd.mode!r} needs a Trainer built with a "
                             "teacher (kd.mode 'online' or 'on_policy')")
        if self.mesh is not None and isinstance(next(iter(batch.values())), np.ndarray):
            batch = sharding.shard_batch(batch, self.mesh)
        if kd not in self._steps:
            self.compile(state, batch, teacher_params, kd)
        with sharding.mesh_context(self.mesh):
            return self._steps[kd](state, batch, teacher_params)


def model_flops_per_token(cfg: models.ModelConfig, seq_len: int, training: bool = True) -> float:
    """Matmul FLOPs per token: 2 per weight a token passes through forward (x3 with
    backward) plus causal attention. An MoE layer counts the router, its k routed
    experts and its shared experts, not the idle ones (MFU of the active parameters);
    latent attention counts its low-rank projections, and scores over q/k heads of
    qk_nope + qk_rope with values of v_head_dim (the expanded form training runs)."""
    d, heads = cfg.hidden_size, cfg.num_heads
    if cfg.mla is not None:
        mla = cfg.mla
        q = (d * heads * mla.qk_head_dim if mla.q_lora_rank is None
             else mla.q_lora_rank * (d + heads * mla.qk_head_dim))
        attn_weights = (q + d * mla.latent_dim
                        + mla.kv_lora_rank * heads * (mla.qk_nope_head_dim + mla.v_head_dim)
                        + heads * mla.v_head_dim * d)
        score_dims = (mla.qk_head_dim + mla.v_head_dim) / 2
    else:
        attn_weights = d * cfg.head_dim * (heads * 2 + cfg.num_kv_heads * 2)
        score_dims = cfg.head_dim
    weights = cfg.hidden_size * cfg.vocab_size
    for _, _, count, is_moe in cfg.layer_stacks:
        if is_moe:
            moe = cfg.moe
            ffn = d * moe.num_experts + 3 * d * moe.expert_intermediate_size * (
                moe.experts_per_token + moe.num_shared_experts)
        else:
            ffn = 3 * d * cfg.intermediate_size
        weights += count * (attn_weights + ffn)
    attention = cfg.num_layers * heads * score_dims * seq_len   # QK^T + AV, causal half
    forward = 2 * weights + 2 * attention
    return 3 * forward if training else forward


# Dense bf16 peak per chip/GPU, TFLOP/s (vendor figures).
PEAK_TFLOPS = {"TPU v4": 275, "TPU v5 lite": 197, "TPU v5e": 197, "TPU v5p": 459, "TPU v5": 459,
               "TPU v6 lite": 918, "TPU v6e": 918, "NVIDIA H100": 989, "NVIDIA H200": 989,
               "NVIDIA A100": 312}


def peak_tflops_per_device(override: float = 0.0) -> float | None:
    if override:
        return override
    kind = jax.devices()[0].device_kind
    for name, tflops in PEAK_TFLOPS.items():
        if kind.startswith(name):
            return tflops
    return None
