"""Online KD between models that share a tokenizer but pad their LM heads differently
(like Qwen2.5-1.5B's 151,936 rows vs 7B's 152,064)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tokenizers
from tokenizers import models as tok_models, pre_tokenizers

from distill_jax import models, sharding
from distill_jax.tokenizer import load_tokenizer
from distill_jax.training.kd_vocab import check_vocabularies, shared_kd_vocabulary
from distill_jax.training.optimizer import make_optimizer
from distill_jax.training.trainer import KDSettings, Trainer

OPT = ml_collections.ConfigDict(dict(learning_rate=1e-3, warmup_steps=2, final_lr_fraction=0.1,
                                     weight_decay=0.01, b1=0.9, b2=0.95, eps=1e-8,
                                     max_grad_norm=1.0))
REAL_TOKENS = ["<unk>", "<|im_start|>", "<|im_end|>"] + [f"w{i}" for i in range(77)]   # 80
SHARED = len(REAL_TOKENS)
# One tokenizer, two paddings; a larger init scale gives peaked, clearly different
# distributions, so the KD value is far from zero.
STUDENT = models.get_config("tiny-qwen2", vocab_size=96, num_kv_heads=4,
                            initializer_range=0.5).replace(name="student-96")
TEACHER = models.get_config("tiny-qwen2", vocab_size=112, num_kv_heads=4, num_layers=3,
                            tie_word_embeddings=False,
                            initializer_range=0.5).replace(name="teacher-112")


def _tokenizer(directory, tokens):
    """A word-level tokenizer.json whose ids are the positions in `tokens`."""
    directory.mkdir()
    tok = tokenizers.Tokenizer(tok_models.WordLevel({t: i for i, t in enumerate(tokens)},
                                                    unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(directory / "tokenizer.json"))
    return load_tokenizer(directory / "tokenizer.json")


def test_shared_vocabulary_size_and_refusals(tmp_path):
    student = _tokenizer(tmp_path / "student", REAL_TOKENS)
    # The teacher's tokenizer has two added tokens the student's lacks: dropped from KD.
    teacher = _tokenizer(tmp_path / "teacher", REAL_TOKENS + ["<extra0>", "<extra1>"])
    assert (student.vocab_size, teacher.vocab_size) == (SHARED, SHARED + 2)
    assert shared_kd_vocabulary(student, teacher, STUDENT, TEACHER) == SHARED
    assert shared_kd_vocabulary(teacher, student, TEACHER, STUDENT) == SHARED

    swapped = list(REAL_TOKENS)
    swapped[50], swapped[51] = swapped[51], swapped[50]
    other = _tokenizer(tmp_path / "other", swapped)
    with pytest.raises(ValueError, match=r"first differ at id 50: the student's .*student"
                                         r".*tokenizer.json has 'w47', the teacher's .*other"
                                         r".*tokenizer.json has 'w48'"):
        shared_kd_vocabulary(student, other, STUDENT, TEACHER)

    with pytest.raises(ValueError, match=r"share 80 token ids but the student model "
                                         r"'student-96' has vocab_size 64"):
        shared_kd_vocabulary(student, teacher, STUDENT.replace(vocab_size=64), TEACHER)

    # One file loaded twice: no id-by-id comparison at all.
    again = load_tokenizer(tmp_path / "student" / "tokenizer.json")
    again.id_to_token = None
    assert shared_kd_vocabulary(student, again, STUDENT, TEACHER) == SHARED


def test_mismatched_vocabularies_need_kd_vocab_size():
    tx, schedule = make_optimizer(OPT, 10)
    online = KDSettings(mode="online")
    with pytest.raises(ValueError, match=r"one vocabulary: the student 'student-96' has 96 token "
                                         r"ids, the teacher 'teacher-112' 112.*kd_vocab_size"):
        Trainer(STUDENT, tx, schedule, kd=online, teacher_cfg=TEACHER)
    with pytest.raises(ValueError, match=r"kd_vocab_size 100 exceeds the student model "
                                         r"'student-96'.s vocab_size 96"):
        Trainer(STUDENT, tx, schedule, kd=online, teacher_cfg=TEACHER, kd_vocab_size=100)
    with pytest.raises(ValueError, match="positive int"):
        check_vocabularies(STUDENT, TEACHER, 0)
    assert check_vocabularies(STUDENT, TEACHER, SHARED) == SHARED
    assert check_vocabularies(STUDENT, STUDENT) == STUDENT.vocab_size


def _batch(rows=8, length=16, seed=0):
    rng = np.random.default_rng(seed)
    seg = np.ones((rows, length), np.int32)
    seg[:, 10:] = 2                                  # two packed examples per row
    seg[::3, 14:] = 0                                # and some padding
    pos = np.where(seg == 2, np.arange(length) - 10, np.arange(length)).astype(np.int32)
    pos[seg == 0] = 0
    return dict(inputs=rng.integers(0, SHARED, (rows, length)).astype(np.int32),
                targets=rng.integers(0, SHARED, (rows, length)).astype(np.int32),
                loss_mask=(rng.random((rows, length)) > 0.3).astype(np.int32),
                segment_ids=seg, positions=pos)


def _logits(cfg, params, batch):
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return np.asarray(models.Transformer(cfg).apply(
        {"params": params}, jnp.asarray(batch["inputs"]), positions=jnp.asarray(batch["positions"]),
        segment_ids=jnp.asarray(batch["segment_ids"])), np.float64)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_online_kd_step_on_padded_vocabularies_matches_numpy_reference():
    temperature = 2.0
    mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})   # vocab split 4 ways
    tx, schedule = make_optimizer(OPT, 10)
    trainer = Trainer(STUDENT, tx, schedule, mesh=mesh, teacher_cfg=TEACHER, kd_vocab_size=SHARED,
                      kd=KDSettings(mode="online", alpha=0.5, temperature=temperature))
    student_params = models.init_params(STUDENT, jax.random.key(0), mesh=mesh)
    teacher_params = models.init_params(TEACHER, jax.random.key(1), mesh=mesh)
    batch = _batch()

    # The reference, from host copies of the params (the step donates the state).
    student_logits = _logits(STUDENT, jax.device_get(student_params), batch)
    teacher_logits = _logits(TEACHER, jax.device_get(teacher_params), batch)
    assert student_logits.shape[-1] == 96 and teacher_logits.shape[-1] == 112
    mask = (batch["loss_mask"] * (batch["segment_ids"] > 0)).astype(np.float64)
    log_p = _log_softmax(teacher_logits[..., :SHARED] / temperature)
    log_q = _log_softmax(student_logits[..., :SHARED] / temperature)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1) * temperature ** 2
    kd_reference = (kl * mask).sum() / mask.sum()
    log_full = _log_softmax(student_logits)          # CE keeps the student's full vocabulary
    ce = -np.take_along_axis(log_full, batch["targets"][..., None], -1)[..., 0]
    ce_reference = (ce * mask).sum() / mask.sum()

    _, metrics = trainer.step(trainer.init_state(student_params), batch, teacher_params)
    assert kd_reference > 0.1
    np.testing.assert_allclose(float(metrics["kd"]), kd_reference, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["ce"]), ce_reference, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss"]), 0.5 * kd_reference + 0.5 * ce_reference,
                               rtol=1e-5)
