"""Teacher sampling: SamplingParams, the KV-cache Sampler, logits processing."""
from distill_jax.sampling.logits_processing import choose_tokens, filter_logits
from distill_jax.sampling.params import SamplingParams
from distill_jax.sampling.outputs import SampleOutput
from distill_jax.sampling.sampler import Sampler

__all__ = ["SampleOutput", "Sampler", "SamplingParams", "choose_tokens", "filter_logits"]
