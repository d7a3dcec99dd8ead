"""The demo's SentencePiece tokenizer and tiny random HF checkpoints, as the tests that
run a model end to end need them (one place, not one copy per test module)."""
import jax

from distill_jax import models
from distill_jax.demo import arithmetic
from distill_jax.tokenizer import train_sentencepiece


def arithmetic_tokenizer(root, problems: int = 500, vocab_size: int = 400) -> str:
    """A SentencePiece model trained on `problems` arithmetic demo problems, under root."""
    corpus = [p.question + "\n" + p.solution for p in arithmetic.make_split(0, 0, problems)]
    return train_sentencepiece(corpus, str(root / "tok"), vocab_size=vocab_size)


def tiny_checkpoint(path, vocab_size: int, preset: str = "tiny-qwen2", **fields):
    """A randomly initialised (seed 0) `preset` saved as an HF checkpoint at `path`."""
    cfg = models.get_config(preset, vocab_size=vocab_size, **fields)
    models.save_hf_checkpoint(str(path), cfg, models.init_params(cfg, jax.random.key(0)))
    return cfg
