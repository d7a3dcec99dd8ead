"""The jitted, sharded training step: mesh invariance and gradient accumulation."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from distill_jax import models, sharding
from distill_jax.training.optimizer import decay_mask, make_optimizer
from distill_jax.training.kd_vocab import check_vocabularies
from distill_jax.training.trainer import KDSettings, Trainer

OPT = ml_collections.ConfigDict(dict(learning_rate=1e-3, warmup_steps=2, final_lr_fraction=0.1,
                                     weight_decay=0.01, b1=0.9, b2=0.95, eps=1e-8,
                                     max_grad_norm=1.0))
CFG = models.get_config("tiny-llama", dtype="float32", param_dtype="float32", num_kv_heads=4)


def _batches(n, rows=8, length=32, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        seg = np.ones((rows, length), np.int32)
        seg[:, 20:] = 2                     # two packed examples per row
        seg[::3, 28:] = 0                   # and some padding
        pos = np.where(seg == 2, np.arange(length) - 20, np.arange(length)).astype(np.int32)
        pos[seg == 0] = 0
        out.append(dict(
            inputs=rng.integers(0, CFG.vocab_size, (rows, length)).astype(np.int32),
            targets=rng.integers(0, CFG.vocab_size, (rows, length)).astype(np.int32),
            loss_mask=(rng.random((rows, length)) > 0.3).astype(np.int32),
            segment_ids=seg, positions=pos))
    return out


@functools.cache
def _initial_params():
    """CFG's params (seed 0) on the host, initialised once for the module (one compile,
    not one per mesh). `Trainer.init_state` places them on a run's mesh; test_transformer's
    test_init_directly_sharded checks that `init_params(mesh=)` gives these values."""
    return jax.tree_util.tree_map(np.asarray, models.init_params(CFG, jax.random.key(0)))


def _run(mesh_shape, batches, microbatches=1):
    mesh = sharding.make_mesh(mesh_shape) if mesh_shape else None
    tx, schedule = make_optimizer(OPT, 10)
    trainer = Trainer(CFG, tx, schedule, mesh=mesh, microbatches=microbatches)
    params = _initial_params()
    if mesh is None:        # fresh device arrays: steps donate the state
        params = jax.tree_util.tree_map(jnp.array, params)
    state = trainer.init_state(params)
    losses = []
    for b in batches:
        state, metrics = trainer.step(state, b)
        losses.append(float(metrics["loss"]))
    return losses, state


@pytest.fixture(scope="module")
def single_device_run():
    """The single-device reference, stepped once for the module: 5 steps of a state
    made from host params (numpy, as a checkpoint loads them). Returns the losses,
    the params after 3 steps (on the host) and the trainer (its compiled steps)."""
    tx, schedule = make_optimizer(OPT, 10)
    trainer = Trainer(CFG, tx, schedule)
    state = trainer.init_state(_initial_params())          # numpy arrays
    losses, after_3 = [], None
    for k, batch in enumerate(_batches(5)):
        state, metrics = trainer.step(state, batch)
        losses.append(float(metrics["loss"]))
        if k == 2:
            after_3 = jax.tree_util.tree_map(np.array, state.params)
    return losses, after_3, trainer


@pytest.mark.slow
def test_losses_on_meshes_equal_single_device(single_device_run):
    batches = _batches(5)
    reference, _, _ = single_device_run
    assert reference[-1] < reference[0] or len(set(reference)) > 1
    for shape in [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)]:
        losses, state = _run(shape, batches)
        np.testing.assert_allclose(losses, reference, atol=1e-5, rtol=0, err_msg=str(shape))
        # FSDP/tensor meshes really shard the params and the optimizer moments.
        if shape[1] > 1:
            kernel = state.params["layers"]["mlp"]["up_kernel"]
            assert len(kernel.sharding.device_set) == 8 and not kernel.sharding.is_fully_replicated


def test_gradient_accumulation_equals_one_big_batch(single_device_run):
    """4 microbatches of 2 rows vs one batch of 8: same loss and update (fp32, atol 1e-6)."""
    batches = _batches(3)            # the first 3 of the reference's 5 (same seed)
    losses, params_full, _ = single_device_run
    full = losses[:3]
    accum, state_accum = _run(None, batches, microbatches=4)
    np.testing.assert_allclose(accum, full, atol=1e-6, rtol=0)
    for a, b in zip(jax.tree_util.tree_leaves(state_accum.params),
                    jax.tree_util.tree_leaves(params_full)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)
    # Normalization is per token of the whole batch: a mean of per-microbatch means
    # would differ here, because microbatches hold different numbers of target tokens.
    counts = [b["loss_mask"][k::4].sum() for b in batches for k in range(4)]
    assert len(set(counts)) > 1


def test_an_moe_student_adds_its_load_balancing_loss():
    """The step's loss is CE + coef x the mean over MoE layers of the router's
    load-balancing loss (transformers' form, k when balanced), and its gradient
    reaches the router; without the coefficient the router learns from CE only."""
    from distill_jax.models import moe as moe_lib
    cfg = models.get_config("tiny-qwen3-moe", vocab_size=CFG.vocab_size)
    params = models.init_params(cfg, jax.random.key(0))
    batch = _batches(1)[0]
    # The reference: what each MoE layer sows in a plain forward.
    forward = jax.jit(functools.partial(models.Transformer(cfg).apply, mutable=["intermediates"],
                                        method="hidden_states"))
    _, state = forward({"params": params}, batch["inputs"], positions=batch["positions"],
                       segment_ids=batch["segment_ids"])
    sown = np.asarray(state["intermediates"]["layers"]["mlp"][moe_lib.AUX_LOSS][0])
    copy = lambda: jax.tree_util.tree_map(np.array, params)  # noqa: E731  (steps donate)
    tx, schedule = make_optimizer(OPT, 10)
    trainer = Trainer(cfg, tx, schedule)
    _, metrics = trainer.step(trainer.init_state(copy()), batch)
    assert sown.shape == (cfg.num_layers,) and np.all(sown >= cfg.moe.experts_per_token - 1e-5)
    assert float(metrics["moe_aux"]) == pytest.approx(sown.mean(), rel=1e-6)
    assert float(metrics["loss"]) == pytest.approx(
        float(metrics["ce"]) + cfg.moe.aux_loss_coef * sown.mean(), rel=1e-6)
    off = models.MoeConfig(**{**cfg.moe.__dict__, "aux_loss_coef": 0.0})
    plain = Trainer(cfg.replace(moe=off), tx, schedule)
    _, plain_metrics = plain.step(plain.init_state(copy()), batch)
    assert "moe_aux" not in plain_metrics
    assert float(plain_metrics["loss"]) == pytest.approx(float(metrics["ce"]), rel=1e-6)


def test_weight_decay_skips_norms_and_biases():
    cfg = models.get_config("tiny-qwen2")
    mask = decay_mask(models.param_shapes(cfg))
    assert mask["layers"]["attn"]["q_kernel"] and mask["embedding"]
    assert not mask["layers"]["attn"]["q_bias"] and not mask["layers"]["input_norm"]["scale"]
    assert not mask["final_norm"]["scale"]


def test_kd_settings_and_vocabulary_checks():
    with pytest.raises(ValueError, match="one vocabulary"):
        check_vocabularies(CFG, CFG.replace(vocab_size=CFG.vocab_size + 1))
    with pytest.raises(ValueError, match="kind='forward_kl' only"):
        KDSettings(mode="offline", kind="jsd")
    with pytest.raises(ValueError, match="kd.mode"):
        KDSettings(mode="sometimes")
    tx, schedule = make_optimizer(OPT, 10)
    with pytest.raises(ValueError, match="needs a teacher"):
        Trainer(CFG, tx, schedule, kd=KDSettings(mode="online"))


@pytest.mark.parametrize("name", ["qwen2.5-7b", "qwen3-30b-a3b", "deepseek-v3"])
def test_flops_per_token_count_the_active_weights(name):
    """At zero context the forward is 2 FLOPs per active weight a matmul touches:
    the active parameters less the embedding lookup, the norms and the biases."""
    from distill_jax.training.trainer import model_flops_per_token
    cfg = models.get_config(name)
    not_matmul = cfg.vocab_size * cfg.hidden_size
    for path, leaf in jax.tree_util.tree_leaves_with_path(models.param_shapes(cfg)):
        key = jax.tree_util.keystr(path)
        if "norm" in key or "bias" in key:
            not_matmul += int(np.prod(leaf.shape))
    assert model_flops_per_token(cfg, 0, training=False) == \
        2 * (models.count_active_params(cfg) - not_matmul)


def test_a_state_from_host_params_compiles_the_step_once(single_device_run):
    """Params as a checkpoint loads them (host arrays, uncommitted) give a state
    placed like the step's outputs: steps 1 to 5 run the same program."""
    _, _, trainer = single_device_run       # its state came from numpy params
    (step,) = trainer._steps.values()
    assert step._cache_size() == 1
