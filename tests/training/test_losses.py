"""kd_loss / cross_entropy against references written here in numpy."""
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.training import losses


def np_log_softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def np_kd(student, teacher, mask, t, kind, beta):
    ls, lt = np_log_softmax(student / t), np_log_softmax(teacher / t)
    ps, pt = np.exp(ls), np.exp(lt)
    if kind == "forward_kl":
        per = (pt * (lt - ls)).sum(-1)
    elif kind == "reverse_kl":
        per = (ps * (ls - lt)).sum(-1)
    else:
        m = beta * pt + (1 - beta) * ps
        per = beta * (pt * (lt - np.log(m))).sum(-1) + (1 - beta) * (ps * (ls - np.log(m))).sum(-1)
    per = per * t * t
    return (per * mask).sum() / mask.sum()


@pytest.fixture()
def logits():
    rng = np.random.default_rng(0)
    student = rng.normal(size=(3, 7, 50)).astype(np.float64) * 2
    teacher = rng.normal(size=(3, 7, 50)).astype(np.float64) * 2
    mask = (rng.random((3, 7)) > 0.3).astype(np.float64)
    return student, teacher, mask


@pytest.mark.parametrize("kind", losses.KD_KINDS)
@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_kd_loss_matches_numpy_reference(logits, kind, temperature):
    student, teacher, mask = logits
    got = losses.kd_loss(jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32),
                         jnp.asarray(mask), temperature=temperature, kind=kind, beta=0.3)
    want = np_kd(student, teacher, mask, temperature, kind, 0.3)
    assert float(got) == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert want > 0


def test_forward_kl_of_identical_distributions_is_zero(logits):
    student, _, mask = logits
    s = jnp.asarray(student, jnp.float32)
    for kind in losses.KD_KINDS:
        assert abs(float(losses.kd_loss(s, s, jnp.asarray(mask), 1.0, kind))) < 1e-6


def test_masked_positions_do_not_change_the_loss(logits):
    student, teacher, mask = logits
    changed = teacher.copy()
    changed[mask == 0] = np.random.default_rng(1).normal(size=changed[mask == 0].shape) * 50
    a = losses.kd_loss(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(mask), 2.0)
    b = losses.kd_loss(jnp.asarray(student), jnp.asarray(changed), jnp.asarray(mask), 2.0)
    assert float(a) == float(b)
    targets = np.zeros((3, 7), np.int32)
    ce_a = losses.cross_entropy(jnp.asarray(student), jnp.asarray(targets), jnp.asarray(mask))
    student_changed = student.copy()
    student_changed[mask == 0] += 100.0
    ce_b = losses.cross_entropy(jnp.asarray(student_changed), jnp.asarray(targets),
                                jnp.asarray(mask))
    assert float(ce_a) == float(ce_b)


def test_temperature_squared_scaling(logits):
    student, teacher, mask = logits
    t = 4.0
    scaled = float(losses.kd_loss(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(mask),
                                  temperature=t))
    # The same KL without the T² factor, computed on the softened distributions directly.
    unscaled = np_kd(student, teacher, mask, t, "forward_kl", 0.5) / (t * t)
    assert scaled == pytest.approx(t * t * unscaled, rel=1e-5)
    assert scaled / unscaled == pytest.approx(16.0, rel=1e-5)


def test_cross_entropy_matches_numpy(logits):
    student, _, mask = logits
    targets = np.random.default_rng(2).integers(0, 50, (3, 7))
    want = -(np.take_along_axis(np_log_softmax(student), targets[..., None], -1)[..., 0] * mask
             ).sum() / mask.sum()
    got = losses.cross_entropy(jnp.asarray(student, jnp.float32), jnp.asarray(targets),
                               jnp.asarray(mask))
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_topk_kd_is_kl_to_renormalized_teacher(logits):
    student, teacher, mask = logits
    k, t = 5, 2.0
    lt = np_log_softmax(teacher)
    ids = np.argsort(-lt, axis=-1)[..., :k]
    lps = np.take_along_axis(lt, ids, -1)
    p = np.exp(np_log_softmax(lps / t))                 # teacher renormalized on its top-k
    log_q = np.take_along_axis(np_log_softmax(student / t), ids, -1)
    want = (p * (np.log(p) - log_q)).sum(-1) * t * t
    got = losses.topk_kd_token_loss(jnp.asarray(student, jnp.float32), jnp.asarray(ids),
                                    jnp.asarray(lps, jnp.float32), temperature=t)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    # -inf slots (fewer stored entries) are ignored; a student equal to the
    # renormalized teacher on the support (and ~0 elsewhere) gives ~0 loss.
    lps_pad = lps.copy()
    lps_pad[..., -1] = -np.inf
    assert np.isfinite(np.asarray(losses.topk_kd_token_loss(
        jnp.asarray(student), jnp.asarray(ids), jnp.asarray(lps_pad), t))).all()
    perfect = np.full_like(student, -1e4)
    np.put_along_axis(perfect, ids, lps, -1)
    zero = losses.topk_kd_token_loss(jnp.asarray(perfect, jnp.float32), jnp.asarray(ids),
                                     jnp.asarray(lps, jnp.float32), temperature=1.0)
    assert float(jnp.max(jnp.abs(zero))) < 1e-4


def test_kd_rejects_bad_arguments(logits):
    student, teacher, mask = logits
    with pytest.raises(ValueError, match="kind"):
        losses.kd_loss(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(mask),
                       kind="kl")
    with pytest.raises(ValueError, match="beta"):
        losses.kd_loss(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(mask),
                       kind="jsd", beta=1.0)
    with pytest.raises(ValueError, match="one vocabulary"):
        losses.kd_loss(jnp.asarray(student), jnp.asarray(teacher[..., :40]), jnp.asarray(mask))
