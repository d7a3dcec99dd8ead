"""The `distill-generate` stage: prompts -> n teacher samples each -> JSONL shards.

Prompts are cut into fixed shards (`prompts_per_shard`, in file order). Each
shard is written to a temporary name and renamed when complete, so a shard file
either exists whole or not at all; a rerun skips existing shards. Sample j of a
prompt is seeded by (seed, hash of the prompt id, j), never by its shard or
batch, so an interrupted-and-resumed run writes byte-identical shards.

The output directory may be a bucket URL (`gs://`, see `distill_jax/storage.py`):
there each shard is one whole-object upload (no temp name, no rename), so resume
logic is the same on both: a shard listed in the directory is complete.

A `manifest.json` pins what the shards were made with (teacher, sampling,
prompts, template); rerunning into the same directory with different settings is
an error rather than a silent mix.

Every shard a host has to do goes into one engine call, so the slots stay full
across shard boundaries (refilled from the next shard's prompts, not drained at
each shard's end); a shard is written as soon as all its prompts are done.

With `return_top_k`, the teacher's top-k logprobs of a shard go to a binary
sidecar beside it (`<shard>.topk_ids.npy` / `.topk_logprobs.npy`, see
`data/topk_store.py`; `top_k_format="json"` keeps the old inline lists), committed
before the shard itself: a shard counts as done when its JSONL exists, so a kill
between the two only means the shard (and its sidecar) is written again.

On several hosts (one mesh over all of them), shard k belongs to host
k mod num_hosts: each host generates and writes only its shards, so hosts never
write the same file, and each resumes its own. All hosts run the sampler's
programs together (a host with nothing left joins with padding), and the files
are exactly those a single host would write with the same slots per device: a
sample's numbers depend only on its own prompt (padded to its own length
bucket, prefilled in a batch of fixed shape), key and settings, never on which
shards or slots it shared the device with (see `sampling/engine.py`). Process 0
writes the summary and prints; the output directory is meant to be shared (NFS,
a bucket URL); on host-local disks each host holds its own shards.

The engine's slot count is `num_slots`, or with 0 the planner's: as many slots
of (longest prompt bucket + max_new_tokens) cache positions as fit in device
memory next to the teacher (`planning.resolve_num_slots`; 64 on CPU, which
reports no memory). What XLA:CPU cannot promise: a different number of slots
per device changes the shapes of the decode step's matrix products, and XLA's
CPU kernels round rows of a [2..32, 512] product differently from a [1, 512]
or [64+, 512] one, so a resumed run that changes `num_slots` or the device count
may differ in the last bit of a logprob (tokens practically never).
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import time
from typing import Any

import jax
from absl import logging

from distill_jax import distributed, models, planning, sharding, storage
from distill_jax.chat import ChatFormat
from distill_jax.config_keys import require_keys
from distill_jax.data.prompts import Prompt, load_prompts_from_config
from distill_jax.data.topk_store import STORED_DTYPES, TopKWriter
from distill_jax.storage import write_json_atomic, write_text_atomic
from distill_jax.progress import Progress
from distill_jax.sampling.params import SamplingParams
from distill_jax.models import attention
from distill_jax.sampling.sampler import DEFAULT_LENGTH_BUCKETS, Sampler, bucket, engine_compiles
from distill_jax.tokenizer import load_tokenizer

MANIFEST = "manifest.json"
SUMMARY = "summary.json"


def prompt_key(prompt_id: str) -> int:
    """A stable 31-bit integer from a prompt id: the sampler's per-prompt seed."""
    return int.from_bytes(hashlib.sha256(prompt_id.encode("utf-8")).digest()[:4], "little") >> 1


def shard_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}.jsonl"


def shard_stem(index: int, count: int) -> str:
    """The shard's name without ".jsonl": its top-k sidecar's stem."""
    return shard_name(index, count)[:-len(".jsonl")]


def sampling_params_from_config(c) -> SamplingParams:
    return SamplingParams(n=c.n, temperature=c.temperature, top_p=c.top_p, top_k=c.top_k,
                          min_p=c.min_p, max_new_tokens=c.max_new_tokens,
                          stop_token_ids=tuple(c.stop_token_ids),
                          stop_strings=tuple(c.stop_strings), seed=c.seed,
                          return_top_k=c.return_top_k)


def _teacher_config(config, tokenizer) -> tuple[models.ModelConfig, str]:
    t = config.teacher
    cfg = models.config_from_section(t, tokenizer.vocab_size)
    if t.checkpoint:
        return cfg, t.id or storage.basename(storage.absolute(t.checkpoint))
    return cfg, t.id or f"{t.preset}-random-init{t.init_seed}"


def chat_format_from_config(tokenizer, tokenizer_section) -> ChatFormat:
    """The chat format of a `tokenizer` config section (generation and evaluation)."""
    return ChatFormat.create(tokenizer, tokenizer_section.get("chat_template") or None,
                             assistant_prefix=tokenizer_section.assistant_prefix)


def render_prompts(prompts: list[Prompt], fmt: ChatFormat, suffix: str | None = None
                   ) -> list[list[int]]:
    """Token ids of each prompt's generation prompt (the assistant turn opened with
    `fmt.opener`, e.g. R1's "<think>\\n")."""
    return fmt.generation_prompt_ids([p.user_message(suffix) for p in prompts])


def _check_manifest(path: str, manifest: dict[str, Any]) -> None:
    # Every host checks (each may have its own disk); writing the same bytes
    # atomically from several hosts is harmless.
    if storage.exists(path):
        old = json.loads(storage.read_text(path))
        changed = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
        if changed:
            raise ValueError(
                f"{path} was written with different settings ({', '.join(changed)}); use a new "
                "output_dir or delete it to start over")
    else:
        write_json_atomic(path, manifest)


def generate_traces(config) -> dict[str, Any]:
    """Runs the stage; returns the summary (also written to output_dir/summary.json)."""
    from distill_jax.sampling.config import default_config
    require_keys(config, default_config(), "distill-generate")
    if config.top_k_format not in ("npy", "json"):
        raise ValueError(f"top_k_format must be 'npy' or 'json', got {config.top_k_format!r}")
    if config.top_k_dtype not in STORED_DTYPES:
        raise ValueError(f"top_k_dtype must be one of {', '.join(STORED_DTYPES)}, got "
                         f"{config.top_k_dtype!r}")
    out_dir = config.output_dir
    pc = config.prompts
    _check_paths(config)
    prompts = load_prompts_from_config(pc)
    if not prompts:
        raise ValueError(f"{pc.path}: no prompts")
    tokenizer = load_tokenizer(config.tokenizer.path)
    fmt = chat_format_from_config(tokenizer, config.tokenizer)
    params = sampling_params_from_config(config.sampling)
    if not params.stop_token_ids:
        params = dataclasses.replace(params, stop_token_ids=fmt.stop_token_ids())
    cfg, teacher_id = _teacher_config(config, tokenizer)
    prompt_ids = render_prompts(prompts, fmt, pc.get("suffix"))
    longest = max(range(len(prompts)), key=lambda i: len(prompt_ids[i]))
    if len(prompt_ids[longest]) + params.max_new_tokens > cfg.max_position_embeddings:
        raise ValueError(
            f"prompt {prompts[longest].id!r} renders to {len(prompt_ids[longest])} tokens; with "
            f"max_new_tokens={params.max_new_tokens} it exceeds the teacher's "
            f"max_position_embeddings={cfg.max_position_embeddings}")

    per_shard = config.prompts_per_shard
    num_shards = math.ceil(len(prompts) / per_shard)
    storage.makedirs(out_dir)
    manifest = {
        "teacher_id": teacher_id,
        "sampling": {k: list(v) if isinstance(v, tuple) else v
                     for k, v in dataclasses.asdict(params).items()},
        "prompts_path": storage.absolute(pc.path), "prompts_format": pc.format,
        "num_prompts": len(prompts), "prompts_per_shard": per_shard,
        "prompt_token_ids_sha256": hashlib.sha256(
            json.dumps(prompt_ids).encode()).hexdigest(),
    }
    _check_manifest(storage.join(out_dir, MANIFEST), manifest)

    host, num_hosts = jax.process_index(), jax.process_count()
    mine = [k for k in range(num_shards) if k % num_hosts == host]
    sidecar = bool(params.return_top_k) and config.top_k_format == "npy"
    finished = _finished_shards(out_dir, set(mine))
    remaining = [k for k in mine if shard_name(k, num_shards) not in finished]
    # max_shards > 0 time-boxes a run (e.g. on preemptible machines); rerun to continue.
    max_shards = config.max_shards
    todo = remaining[:max_shards] if max_shards else remaining
    (rounds,) = distributed.agree_max(len(todo))
    logging.info("generate: %d prompts in %d shards; host %d of %d owns %d, %d already done, "
                 "%d to do this run", len(prompts), num_shards, host, num_hosts, len(mine),
                 len(mine) - len(remaining), len(todo))

    run_tokens, run_start, compiles = 0, time.monotonic(), engine_compiles()
    stats: dict = {}
    num_slots = 0
    if rounds:      # some host has work: every host joins the one collective call
        mesh = sharding.make_mesh(dict(config.mesh)) if config.get("mesh") else None
        # Every shard this host does in one engine call, so the slots stay full across
        # shard boundaries; a shard is written as soon as its prompts are all done.
        mine_now = [i for k in todo for i in range(k * per_shard,
                                                   min((k + 1) * per_shard, len(prompts)))]
        longest_bucket = bucket(len(prompt_ids[longest]), DEFAULT_LENGTH_BUCKETS,
                                 "prompt length")
        num_slots, rule = planning.resolve_num_slots(config, longest_bucket,
                                                     num_hosts=num_hosts)
        if not config.num_slots:   # no more slots than this run has samples
            (most,) = distributed.agree_max(len(mine_now) * params.n)
            data_parallel = sharding.data_parallel_size(mesh)
            cap = -(-most * num_hosts // data_parallel) * data_parallel
            if cap < num_slots:
                num_slots, rule = cap, f"{rule}; capped at the run's {most} samples per host"
        logging.info("generate: %d slots (%s)", num_slots, rule)
        # One slot length for the run (every shard's programs the same shapes).
        slot_len = -(-(longest_bucket + params.max_new_tokens) // attention.DECODE_BLOCK) * \
            attention.DECODE_BLOCK
        _, teacher_params = models.model_from_section(config.teacher, tokenizer.vocab_size, mesh)
        sampler = Sampler(cfg, teacher_params, mesh=mesh, tokenizer=tokenizer,
                          num_slots=num_slots, slot_len=slot_len, scheduler=config.scheduler,
                          pad_id=tokenizer.pad_id or 0)
        progress = Progress(len(mine_now), "prompts",
                            "generate" if num_hosts == 1 else f"generate host 0/{num_hosts}",
                            enabled=distributed.is_primary())
        left = {k: min((k + 1) * per_shard, len(prompts)) - k * per_shard for k in todo}
        done: dict[int, list] = {}
        for pos, samples in sampler.generate_stream(
                [prompt_ids[i] for i in mine_now], params,
                prompt_keys=[prompt_key(prompts[i].id) for i in mine_now]):
            i = mine_now[pos]
            done[i] = samples
            k = i // per_shard
            left[k] -= 1
            if left[k]:
                continue
            lo, hi = k * per_shard, min((k + 1) * per_shard, len(prompts))
            lines = []
            writer = TopKWriter(out_dir, shard_stem(k, num_shards), params.return_top_k,
                                config.top_k_dtype) if sidecar else None
            for i in range(lo, hi):
                for j, s in enumerate(done[i]):
                    record = _record(prompts[i], prompt_ids[i], j, s, params, teacher_id,
                                     tokenizer, writer)
                    record["user_message"] = prompts[i].user_message(pc.get("suffix"))
                    # What the prompt already holds of the assistant turn (SFT puts it
                    # back in front of the text): the format's, not the config's, since
                    # the template may have opened the reasoning itself.
                    record["assistant_prefix"] = fmt.opener
                    lines.append(json.dumps(record, ensure_ascii=False))
            n_tokens = sum(len(s.token_ids) for i in range(lo, hi) for s in done.pop(i))
            run_tokens += n_tokens
            if writer is not None:     # the sidecar first: a shard never lacks its sidecar
                writer.commit()
            write_text_atomic(storage.join(out_dir, shard_name(k, num_shards)),
                              "\n".join(lines) + "\n")
            progress.update(hi - lo, tokens=n_tokens)
        stats = sampler.stats
    elapsed = time.monotonic() - run_start
    (run_tokens, shards_written) = (sum(x) for x in zip(*distributed.gather_json(
        [run_tokens, len(todo)])))
    distributed.barrier("generate:shards-written")
    summary = summarize(out_dir, num_shards)
    summary.update(run_new_tokens=run_tokens, run_seconds=round(elapsed, 3),
                   run_tokens_per_s=round(run_tokens / elapsed, 1) if elapsed > 0 else None,
                   shards_written_this_run=shards_written, teacher_id=teacher_id,
                   compiled_programs=engine_compiles() - compiles, num_hosts=num_hosts,
                   num_slots=num_slots,
                   slot_utilization=round(stats["utilization"], 4) if stats.get(
                       "decode_steps") else None)
    if not distributed.is_primary():
        return summary
    write_json_atomic(storage.join(out_dir, SUMMARY), summary)
    print(f"generate: {summary['complete_shards']}/{num_shards} shards, "
          f"{summary['samples']} samples, {summary['total_tokens']} tokens; this run "
          f"{run_tokens} tokens in {elapsed:.1f}s ({summary['run_tokens_per_s']} tok/s); "
          f"finish reasons {summary['finish_reasons']}")
    return summary


def _check_paths(config) -> None:
    """A URL whose backend is missing fails here, before the teacher is loaded."""
    for what, path in (("prompts.path", config.prompts.path), ("output_dir", config.output_dir),
                       ("tokenizer.path", config.tokenizer.path),
                       ("teacher.checkpoint", config.teacher.checkpoint)):
        storage.check_path(path, f"config.{what}")


def _listing(out_dir: str) -> list[str]:
    """The directory's names as they are now: other hosts write into it, and an
    object store's client may answer from a listing it cached earlier."""
    if not storage.is_local(out_dir):
        fs, path = storage.filesystem(out_dir)
        fs.invalidate_cache(path)
    return storage.listdir(out_dir)


def _finished_shards(out_dir: str, mine: set[int]) -> set[str]:
    """The names in `out_dir`, after removing this host's unfinished temp files.

    Locally a killed writer leaves `<name>.tmp.<pid>` (of a shard or of its top-k
    sidecar); it is redone. Each host removes only its own shards' temp files:
    another host may be writing right now. An object store holds no temp files
    (uploads are spooled locally and appear whole), so there this removes nothing."""
    names = []
    for name in _listing(out_dir):
        if name.startswith("shard-") and ".tmp." in name and int(name[6:11]) in mine:
            logging.info("generate: removing unfinished %s", name)
            storage.remove(storage.join(out_dir, name))
        else:
            names.append(name)
    return set(names)


def _record(p: Prompt, prompt_ids, j, s, params: SamplingParams, teacher_id, tokenizer,
            topk_writer: TopKWriter | None = None):
    record = {
        "prompt_id": p.id, "source": p.source, "kind": p.kind, "problem": p.problem,
        "reference": p.reference, "prompt": tokenizer.decode(prompt_ids),
        "sample_index": j, "text": s.text, "token_ids": s.token_ids,
        "logprobs": [round(x, 6) for x in s.logprobs], "finish_reason": s.finish_reason,
        "num_tokens": len(s.token_ids), "teacher_id": teacher_id,
        "sampling": {"temperature": params.temperature, "top_p": params.top_p,
                     "top_k": params.top_k, "min_p": params.min_p,
                     "max_new_tokens": params.max_new_tokens, "seed": params.seed},
    }
    if params.return_top_k and topk_writer is not None:
        record["top_k"] = topk_writer.add(s.top_k_ids, s.top_k_logprobs)
    elif params.return_top_k:
        record["top_k_ids"] = s.top_k_ids
        record["top_k_logprobs"] = [[round(x, 6) for x in row] for row in s.top_k_logprobs]
    return record


def summarize(out_dir: str, num_shards: int) -> dict[str, Any]:
    reasons: collections.Counter = collections.Counter()
    samples = tokens = complete = 0
    present = set(_listing(out_dir))
    for k in range(num_shards):
        name = shard_name(k, num_shards)
        if name not in present:
            continue
        complete += 1
        with storage.open(storage.join(out_dir, name), encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                samples += 1
                tokens += r["num_tokens"]
                reasons[r["finish_reason"]] += 1
    return {"complete_shards": complete, "num_shards": num_shards, "samples": samples,
            "total_tokens": tokens, "finish_reasons": dict(sorted(reasons.items()))}
