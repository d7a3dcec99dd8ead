"""The sampler against transformers `generate` (torch CPU) on tiny random checkpoints."""
import pytest

from distill_jax import models, sampling
from tests.hf_reference import hf_greedy, save_hf_model
from tests.sampling.test_sampler import PROMPTS


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_greedy_equals_transformers_generate(kind, tmp_path):
    hf_model = save_hf_model(kind, tmp_path)
    cfg, params = models.load_hf_checkpoint(tmp_path)
    outs = sampling.Sampler(cfg, params).generate(
        PROMPTS, sampling.SamplingParams(temperature=0.0, max_new_tokens=64))
    ref = hf_greedy(hf_model, PROMPTS, 64)
    for i in range(len(PROMPTS)):
        assert outs[i][0].token_ids == ref[i], f"prompt {i}"
        assert outs[i][0].finish_reason == "length"
