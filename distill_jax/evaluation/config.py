"""Defaults of `distill-evaluate`: the R1 paper's protocol (DeepSeek-R1, Supp. "Evaluation").

Every benchmark is sampled at temperature 0.6 and top-p 0.95 with up to 32,768 new
tokens, k samples per problem (64 for AIME and GPQA, 16 for MATH-500 and
Codeforces-style problems, 8 for LiveCodeBench), the R1 prompt suffix and the
`<think>` opener; pass@1 is averaged over the k samples (with its standard error
across problems), cons@k is the majority vote.
"""
import ml_collections

from distill_jax.models.from_config import model_section

R1_TEMPERATURE, R1_TOP_P, R1_MAX_NEW_TOKENS = 0.6, 0.95, 32_768
# The paper's k per benchmark family.
R1_K = {"aime": 64, "gpqa": 64, "math500": 16, "codeforces": 16, "livecodebench": 8}


def benchmark(path: str, format: str, k: int, kind: str = "math", **fields):
    """One benchmark's section: where its problems are, how to read them, k samples each.

    format: gsm8k | math500 | aime24 | humaneval (the files in ../shared/data), gpqa
      (multiple choice, options shuffled with a fixed seed), aime (AIME 2025 and
      similar), code_io (LiveCodeBench / Codeforces-style stdin/stdout problems) or
      jsonl (id/problem/answer fields named below).
    max_new_tokens: 0 = sampling.max_new_tokens. suffix: None = R1's for the kind.
    """
    section = ml_collections.ConfigDict({
        "path": path, "format": format, "k": k, "kind": kind, "max_new_tokens": 0,
        "suffix": ml_collections.config_dict.placeholder(str), "limit": 0,
        "id_field": "id", "problem_field": "problem", "answer_field": "answer"})
    section.update(fields)
    return section


def benchmarks(**sections) -> ml_collections.ConfigDict:
    """The `benchmarks` section, in the order given (a plain ConfigDict sorts its keys)."""
    return ml_collections.ConfigDict(sections, sort_keys=False)


def default_config():
    c = ml_collections.ConfigDict()
    c.output_dir = "artifacts/eval/r1"
    c.num_slots = 64        # the sampling engine's decode slots, all hosts together
    c.math_timeout_s = 5.0
    c.resume_chunk = 0      # problems per resumable chunk; 0 = max(1, num_slots // k)

    # name -> benchmark(...); evaluated, and tabled, in this order (the R1 paper's), in one
    # process with one model load. Build your own with `benchmarks(...)` to keep the order.
    c.benchmarks = benchmarks(
        aime24=benchmark("../shared/data/aime24_test.jsonl", "aime24", R1_K["aime"]),
        math500=benchmark("../shared/data/math500_test.jsonl", "math500", R1_K["math500"]))

    # HF directory (e.g. distill-train's export), and every ModelConfig field no
    # checkpoint fixes (see models/from_config.py).
    c.model = model_section(dtype="bfloat16", param_dtype="bfloat16")

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.path = ""             # "" = the checkpoint directory
    c.tokenizer.chat_template = ""
    c.tokenizer.assistant_prefix = "<think>\n"

    c.sampling = ml_collections.ConfigDict()
    c.sampling.temperature = R1_TEMPERATURE
    c.sampling.top_p = R1_TOP_P
    c.sampling.max_new_tokens = R1_MAX_NEW_TOKENS
    c.sampling.seed = 0

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "expert": 1, "tensor": 1})
    return c
