"""The foundation demo (`distill-demo`): a tiny random model behind a demo-trained tokenizer.

  distill-demo --config=configs/foundation_cpu.py
"""
import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.output_dir = "artifacts/demo"

    config.tokenizer = ml_collections.ConfigDict()
    config.tokenizer.vocab_size = 512
    config.tokenizer.corpus_problems = 2000      # synthetic problems the tokenizer learns from

    config.model = ml_collections.ConfigDict()
    config.model.preset = "tiny-qwen2"           # vocab_size is taken from the tokenizer
    config.model.dtype = "float32"

    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "expert": 1, "tensor": 1})

    config.decode = ml_collections.ConfigDict()
    config.decode.max_new_tokens = 32
    config.decode.prompt = "Ada has 7 coins. Then Ada gets 5 more. How many coins does Ada have now?"
    return config
