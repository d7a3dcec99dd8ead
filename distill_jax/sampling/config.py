"""Defaults of `distill-generate`: GSM8K train with the R1 prompt and decoding settings."""
import ml_collections

from distill_jax.data.prompts import prompt_section
from distill_jax.models.from_config import model_section


def default_config():
    c = ml_collections.ConfigDict()
    c.output_dir = "artifacts/traces/gsm8k"
    c.prompts_per_shard = 64
    c.max_shards = 0                  # > 0: stop after this many shards (rerun resumes)
    # Decode slots (rows resident on the device, all hosts; a multiple of the mesh's
    # data x fsdp x expert and of the host count). 0 = the planner's slot count: what fits in
    # device memory (planning.resolve_num_slots); 64 where the device reports no
    # memory, e.g. CPU.
    c.num_slots = 0
    # continuous: a finished sample's slot is refilled at once; static: the slots are
    # refilled together when all have finished (the old engine; for comparison).
    c.scheduler = "continuous"
    # With sampling.return_top_k: "npy" writes each shard's top-k to binary sidecars
    # (<shard>.topk_ids.npy int32, <shard>.topk_logprobs.npy; records carry a "top_k"
    # ref, see data/topk_store.py); "json" inlines them as lists (~3x larger, slow).
    c.top_k_format = "npy"
    c.top_k_dtype = "float16"         # float16 | bfloat16 | float32 (logprobs in the sidecar)

    c.prompts = prompt_section("../shared/data/gsm8k_train.jsonl", "gsm8k")

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.path = ""
    c.tokenizer.chat_template = ""    # "" = the tokenizer's own; or chatml/qwen2.5/llama3/deepseek-r1
    c.tokenizer.assistant_prefix = "<think>\n"

    # HF directory (checkpoint) or a preset with random weights (tests, smoke runs), and
    # every ModelConfig field no checkpoint fixes (see models/from_config.py).
    c.teacher = model_section(dtype="bfloat16", param_dtype="bfloat16")
    c.teacher.id = ""                 # "" = the checkpoint directory's name

    c.sampling = ml_collections.ConfigDict()
    c.sampling.n = 4
    c.sampling.temperature = 0.6      # R1's recommended decoding
    c.sampling.top_p = 0.95
    c.sampling.top_k = 0
    c.sampling.min_p = 0.0
    c.sampling.max_new_tokens = 2048
    c.sampling.seed = 0
    c.sampling.return_top_k = 0       # > 0: store the teacher's top-k logprobs (offline KD)
    c.sampling.stop_token_ids = ()    # () = the tokenizer's EOS / end-of-turn tokens
    c.sampling.stop_strings = ()

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "expert": 1, "tensor": 1})
    return c
