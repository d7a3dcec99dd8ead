"""The sampler against transformers `generate` (torch CPU) on tiny random checkpoints."""
import pytest
import torch

from distill_jax import models, sampling
from tests.hf_reference import save_hf_model
from tests.sampling.test_sampler import PROMPTS


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_greedy_equals_transformers_generate(kind, tmp_path):
    hf_model = save_hf_model(kind, tmp_path)
    cfg, params = models.load_hf_checkpoint(tmp_path)
    outs = sampling.Sampler(cfg, params).generate(
        PROMPTS, sampling.SamplingParams(temperature=0.0, max_new_tokens=64))
    width = max(map(len, PROMPTS))
    ids = torch.zeros((len(PROMPTS), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(PROMPTS):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    with torch.no_grad():
        ref = hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=64,
                                do_sample=False, eos_token_id=None, pad_token_id=0)
    for i in range(len(PROMPTS)):
        assert outs[i][0].token_ids == ref[i, width:].tolist(), f"prompt {i}"
        assert outs[i][0].finish_reason == "length"
