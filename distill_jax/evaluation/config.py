"""Defaults of `distill-evaluate`: GSM8K test with the R1 protocol."""
import ml_collections

from distill_jax.models.from_config import model_section


def default_config():
    c = ml_collections.ConfigDict()
    c.output_dir = "artifacts/eval/gsm8k"
    c.max_batch = 64
    c.math_timeout_s = 5.0

    c.problems = ml_collections.ConfigDict()
    c.problems.path = "../shared/data/gsm8k_test.jsonl"
    c.problems.format = "gsm8k"       # gsm8k | math500 | aime24 | humaneval | jsonl
    c.problems.id_field = "id"
    c.problems.problem_field = "problem"
    c.problems.answer_field = "answer"
    c.problems.kind = "math"
    c.problems.limit = 0
    c.problems.suffix = ml_collections.config_dict.placeholder(str)   # None = R1 default

    # HF directory (e.g. distill-train's export), and every ModelConfig field no
    # checkpoint fixes (see models/from_config.py).
    c.model = model_section(dtype="bfloat16", param_dtype="bfloat16")

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.path = ""             # "" = the checkpoint directory
    c.tokenizer.chat_template = ""
    c.tokenizer.assistant_prefix = "<think>\n"

    c.sampling = ml_collections.ConfigDict()
    c.sampling.k = 4
    c.sampling.temperature = 0.6
    c.sampling.top_p = 0.95
    c.sampling.max_new_tokens = 2048
    c.sampling.seed = 0

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    return c
