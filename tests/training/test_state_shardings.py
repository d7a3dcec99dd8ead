"""Optimizer-state shardings follow each moment's own parameter, fresh and restored."""
import jax
import ml_collections
import numpy as np
import pytest
import optax

from distill_jax import models, sharding
from distill_jax.training.checkpoint import Checkpointer
from distill_jax.training.optimizer import make_optimizer
from distill_jax.training.trainer import Trainer

OPT = ml_collections.ConfigDict(dict(learning_rate=1e-3, warmup_steps=2, final_lr_fraction=0.1,
                                     weight_decay=0.01, b1=0.9, b2=0.95, eps=1e-8,
                                     max_grad_norm=1.0))
# hidden_size == intermediate_size: gate [L, d, f] and down [L, f, d] have one shape but
# transposed logical axes, so a sharding looked up by shape is wrong for one of them.
CFG = models.get_config("tiny-qwen2", intermediate_size=64, num_kv_heads=4)
MESH_SHAPE = {"data": 1, "fsdp": 2, "tensor": 4}


def _trainer_and_state():
    mesh = sharding.make_mesh(MESH_SHAPE)
    tx, schedule = make_optimizer(OPT, 10)
    trainer = Trainer(CFG, tx, schedule, mesh=mesh)
    return trainer, trainer.init_state(models.init_params(CFG, jax.random.key(0), mesh=mesh))


def _assert_same_layout(actual, expected):
    """Same tree, shapes, dtypes and (equivalent) shardings, leaf by leaf."""
    assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
    for (path, a), e in zip(jax.tree_util.tree_leaves_with_path(actual),
                            jax.tree_util.tree_leaves(expected)):
        name = jax.tree_util.keystr(path)
        assert (a.shape, a.dtype) == (e.shape, e.dtype), name
        assert a.sharding.is_equivalent_to(e.sharding, len(a.shape)), (
            f"{name}: {a.sharding} vs {e.sharding}")


def _adam_states(opt_state):
    is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)  # noqa: E731
    return [s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=is_adam) if is_adam(s)]


def _assert_moments_follow_their_params(state):
    mlp = state.params["layers"]["mlp"]
    gate, down = mlp["gate_kernel"].sharding, mlp["down_kernel"].sharding
    assert mlp["gate_kernel"].shape == mlp["down_kernel"].shape
    assert not gate.is_equivalent_to(down, 3)      # the case a shape lookup gets wrong
    (adam,) = _adam_states(state.opt_state)
    for moments in (adam.mu, adam.nu):
        moment_mlp = moments["layers"]["mlp"]
        for name, expected in (("gate_kernel", gate), ("down_kernel", down),
                               ("up_kernel", mlp["up_kernel"].sharding)):
            assert moment_mlp[name].sharding.is_equivalent_to(expected, 3), name
    assert adam.count.sharding.is_fully_replicated and state.step.sharding.is_fully_replicated


def test_abstract_state_matches_a_fresh_state_and_moments_follow_their_params():
    trainer, state = _trainer_and_state()
    abstract = trainer.abstract_state()
    _assert_same_layout(state, abstract)
    _assert_moments_follow_their_params(state)
    _assert_moments_follow_their_params(abstract)


def test_checkpoint_round_trip_restores_shardings_and_values(tmp_path):
    trainer, state = _trainer_and_state()
    meta = {"model": models.to_hf_config(CFG)}
    ckpt = Checkpointer(str(tmp_path / "ckpt"), save_every=1, async_save=False)
    try:
        ckpt.save(0, state, [{}], meta, force=True)
        ckpt.wait()
        restored, hosts = ckpt.restore(0, trainer.abstract_state(), meta)
    finally:
        ckpt.close()
    assert hosts == [{}]
    _assert_same_layout(restored, state)
    _assert_moments_follow_their_params(restored)
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_staged_bucket_checkpoints_survive_a_failed_upload(bucket, monkeypatch):
    """A scheme orbax cannot write (the fake bucket): a step whose upload fails is not
    committed, the next save publishes both, and a new Checkpointer restores the newest."""
    from distill_jax import storage
    trainer, state = _trainer_and_state()
    meta = {"model": models.to_hf_config(CFG)}
    directory = f"{bucket}/ckpt"
    ckpt = Checkpointer(directory, save_every=1, keep=3, async_save=False)
    try:
        ckpt.save(0, state, [{}], meta, force=True)
        with monkeypatch.context() as m:
            m.setattr(storage, "publish_dir", lambda *a: (_ for _ in ()).throw(
                OSError("network down")))
            with pytest.raises(OSError, match="network down"):
                ckpt.save(1, state, [{}], meta, force=True)    # publishes step 0 first
        assert not storage.is_committed(f"{directory}/0")
        ckpt.save(1, state, [{}], meta, force=True)
        ckpt.wait()
    finally:
        ckpt.close()
    assert [storage.is_committed(f"{directory}/{k}") for k in (0, 1)] == [True, True]
    again = Checkpointer(directory, save_every=1, keep=3, async_save=False)
    try:
        assert again.latest_step() == 1
        restored, _ = again.restore(1, trainer.abstract_state(), meta)
    finally:
        again.close()
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
