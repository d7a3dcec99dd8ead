"""distill_jax: reasoning distillation (R1-style rejection sampling + SFT/KD) in JAX."""
__version__ = "0.1.0"
