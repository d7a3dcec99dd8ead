"""A demo tokenizer and a small curated-trace file, shared by the training tests."""
import json

import pytest

from distill_jax.demo import arithmetic
from distill_jax.tokenizer import load_tokenizer
from tests.tiny_models import arithmetic_tokenizer


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory):
    return arithmetic_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def tokenizer(tokenizer_path):
    return load_tokenizer(tokenizer_path)


def write_traces(path, count, tokenizer=None, topk=0, seed=0):
    """Curated records like distill-filter's export; with topk, teacher ids and logprobs."""
    rows = []
    for k, p in enumerate(arithmetic.make_split(seed, 0, count)):
        text = f"{p.solution}\n</think>\nSo the answer is \\boxed{{{p.answer}}}."
        row = {"prompt_id": f"arith-{k}", "sample_index": 0, "prompt": p.question,
               "assistant_prefix": "<think>\n", "response": "<think>\n" + text,
               "final_answer": str(p.answer), "source": "arith"}
        if topk:
            ids = tokenizer.encode(text) + [tokenizer.token_to_id("<|im_end|>")]
            row["token_ids"] = ids
            row["top_k_ids"] = [[(t + j) % tokenizer.vocab_size for j in range(topk)] for t in ids]
            row["top_k_logprobs"] = [[-0.2 - j for j in range(topk)] for _ in ids]
        rows.append(row)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return rows
