"""Which token ids soft-target KD compares, when student and teacher pad differently.

Models of one family share a tokenizer but pad the embedding / LM head to
different sizes: Qwen2.5-1.5B has 151,936 rows, Qwen2.5-7B and -32B 152,064,
for the same ~151,665 real tokens. Padded rows are never a real token, so they
never carry probability that matters to KD. Online KD therefore compares the two
models over the leading ids both tokenizers agree on: each side's logits are
cut to those ids and the softmax renormalises over them. Tokens the teacher's
tokenizer has beyond that shared range (added tokens the student lacks) are
dropped the same way; the student's own CE still uses its full vocabulary.
"""
from __future__ import annotations

import os

from distill_jax import models
from distill_jax.tokenizer import Tokenizer


def check_vocabularies(student: models.ModelConfig, teacher: models.ModelConfig,
                       kd_vocab_size: int | None = None) -> int:
    """The number of leading ids KD is computed over; raises if the configs cannot hold it.

    Without `kd_vocab_size` the two models must have the same vocab_size (nothing
    says which of their ids are real tokens); with it, both must have at least that
    many rows (see `shared_kd_vocabulary` for deriving it from the tokenizers).
    """
    if kd_vocab_size is None:
        if student.vocab_size != teacher.vocab_size:
            raise ValueError(
                f"soft-target KD needs one vocabulary: the student {_name(student)} has "
                f"{student.vocab_size} token ids, the teacher {_name(teacher)} "
                f"{teacher.vocab_size}. If they share a tokenizer and differ only in padding, "
                "pass kd_vocab_size (shared_kd_vocabulary of the two tokenizers); otherwise use "
                "SFT on the teacher's traces (kd.mode='none')")
        return student.vocab_size
    if isinstance(kd_vocab_size, bool) or not isinstance(kd_vocab_size, int) \
            or kd_vocab_size < 1:
        raise ValueError(f"kd_vocab_size must be a positive int, got {kd_vocab_size!r}")
    for role, cfg in (("student", student), ("teacher", teacher)):
        if kd_vocab_size > cfg.vocab_size:
            raise ValueError(
                f"kd_vocab_size {kd_vocab_size} exceeds the {role} model {_name(cfg)}'s "
                f"vocab_size {cfg.vocab_size}: its LM head has no logits for ids "
                f"{cfg.vocab_size}..{kd_vocab_size - 1}")
    return kd_vocab_size


def shared_kd_vocabulary(student_tokenizer: Tokenizer, teacher_tokenizer: Tokenizer,
                         student_cfg: models.ModelConfig,
                         teacher_cfg: models.ModelConfig) -> int:
    """Leading token ids over which online KD is computed (see the module docstring).

    Both tokenizers must map every id of their shared range to the same token:
    otherwise logit i of the student and of the teacher would mean different
    tokens and the KL would compare unrelated things. The shared size is the
    smaller tokenizer's vocab_size; both models must have at least that many rows.
    """
    shared = min(student_tokenizer.vocab_size, teacher_tokenizer.vocab_size)
    for role, tokenizer, cfg in (("student", student_tokenizer, student_cfg),
                                 ("teacher", teacher_tokenizer, teacher_cfg)):
        if shared > cfg.vocab_size:
            raise ValueError(
                f"the tokenizers share {shared} token ids but the {role} model "
                f"{_name(cfg)} has vocab_size {cfg.vocab_size} (tokenizer {tokenizer.name}): "
                "its LM head is smaller than the vocabulary; check the model config")
    if not _same_source(student_tokenizer, teacher_tokenizer):
        _check_same_tokens(student_tokenizer, teacher_tokenizer, shared)
    return shared


def _same_source(a: Tokenizer, b: Tokenizer) -> bool:
    """One object, or one file loaded twice: the id-by-id comparison can be skipped."""
    if a is b:
        return True
    if type(a) is not type(b) or not (os.path.isfile(a.name) and os.path.isfile(b.name)):
        return False
    return os.path.samefile(a.name, b.name)


def _check_same_tokens(student: Tokenizer, teacher: Tokenizer, size: int) -> None:
    # A plain loop: ~152k lookups per side is well under a second, and it stops at
    # the first difference, which is the one worth reporting.
    for token_id in range(size):
        student_token, teacher_token = student.id_to_token(token_id), teacher.id_to_token(token_id)
        if student_token != teacher_token:
            raise ValueError(
                f"soft-target KD needs the same token at the same id, but the tokenizers "
                f"first differ at id {token_id}: the student's {student.name} has "
                f"{student_token!r}, the teacher's {teacher.name} has {teacher_token!r}. "
                "Use SFT on the teacher's traces (kd.mode='none') for different tokenizers")


def _name(cfg: models.ModelConfig) -> str:
    return repr(cfg.name or cfg.model_type)
