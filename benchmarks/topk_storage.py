"""Teacher top-k storage: inline JSON lists vs binary sidecars (int32 + float16).

Synthetic R1-like traces: `--records` samples of ~`--tokens` tokens (uniform in
[0.8, 1.2] x tokens), top-`--k` per token, ids uniform over a 151,936-token
vocabulary (Qwen2's), logprobs shaped like a reasoning teacher at T=0.6: the top
token's logprob -Exp(mean 0.3), each next one lower by Exp(mean 1.2), clipped at
-30. Measured:
  - bytes per token of the top-k alone, as `distill-generate` wrote it inline
    (`top_k_ids` + `top_k_logprobs` rounded to 6 decimals, JSON) vs the sidecar
    (.npy files, header included) in float16, bfloat16 and float32;
  - read speed: the top-k arrays (int32 / float32 numpy) of all records from a
    JSONL shard (read, json.loads, np.asarray) vs the same shard with refs +
    sidecar (read, json.loads, `topk_arrays` through one `TopKReader`); both
    files hot in the page cache, timed alternately (`interleaved`, median);
  - read speed in the training pipeline: `encode_example` for offline KD (top-k
    width k) of every record of a curated JSONL read through `JsonlSource`, with
    inline lists vs sidecar refs (the demo's SentencePiece tokenizer renders the
    prompt; the response is the teacher's own ids);
  - the float16 / bfloat16 round-trip error of logprobs in [-30, 0] and [-1, 0]
    (a grid of 10^6 values), and of the synthetic ones.
--write appends the table rows to BENCHMARKS.md.

  python benchmarks/topk_storage.py [--records 16] [--tokens 6000] [--k 20] [--write]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

from distill_jax.data.topk_store import TopKReader, TopKWriter, sidecar_paths, topk_arrays

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import append_row, interleaved  # noqa: E402

VOCAB = 151_936


def synthetic_topk(num_tokens: int, k: int, rng) -> tuple[np.ndarray, np.ndarray]:
    ids = rng.integers(0, VOCAB, (num_tokens, k), dtype=np.int32)
    top1 = -rng.exponential(0.3, (num_tokens, 1))
    gaps = rng.exponential(1.2, (num_tokens, k - 1))
    logprobs = np.concatenate([top1, top1 - np.cumsum(gaps, axis=1)], axis=1)
    return ids, np.clip(logprobs, -30, 0).astype(np.float32)


def json_topk(ids: np.ndarray, logprobs: np.ndarray) -> dict:
    """The inline form `distill-generate` wrote (sampling/generate.py, top_k_format=json)."""
    return {"top_k_ids": ids.tolist(),
            "top_k_logprobs": [[round(x, 6) for x in row] for row in logprobs.tolist()]}


def base_record(i: int, ids: np.ndarray, rng) -> dict:
    n = len(ids)
    return {"prompt_id": f"synthetic-{i}", "sample_index": 0, "num_tokens": n,
            "prompt": f"What is {i} + {i}?", "response": "<think>\n...",
            "assistant_prefix": "", "token_ids": ids[:, 0].tolist(),
            "logprobs": [round(x, 6) for x in (-rng.exponential(0.3, n)).tolist()]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=6000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    data = [synthetic_topk(int(args.tokens * rng.uniform(0.8, 1.2)), args.k, rng)
            for _ in range(args.records)]
    total_tokens = sum(len(ids) for ids, _ in data)

    with tempfile.TemporaryDirectory() as tmp:
        # Inline JSON shard and sidecar shards (one per dtype) of the same records.
        json_path = os.path.join(tmp, "inline.jsonl")
        json_topk_bytes = 0
        with open(json_path, "w") as f:
            for i, (ids, lp) in enumerate(data):
                topk = json_topk(ids, lp)
                json_topk_bytes += len(json.dumps(topk)) - 2     # without the braces
                f.write(json.dumps({**base_record(i, ids, rng), **topk}) + "\n")
        sidecar_bytes = {}
        for dtype in ("float16", "bfloat16", "float32"):
            writer = TopKWriter(tmp, f"sidecar-{dtype}", args.k, dtype)
            lines = [json.dumps({**base_record(i, ids, rng), "top_k": writer.add(ids, lp)})
                     for i, (ids, lp) in enumerate(data)]
            writer.commit()
            with open(os.path.join(tmp, f"sidecar-{dtype}.jsonl"), "w") as f:
                f.write("\n".join(lines) + "\n")
            sidecar_bytes[dtype] = sum(os.path.getsize(p) for p in sidecar_paths(tmp, writer.stem))
        sidecar_path = os.path.join(tmp, "sidecar-float16.jsonl")

        def read_json():
            out = []
            with open(json_path) as f:
                for line in f:
                    r = json.loads(line)
                    out.append((np.asarray(r["top_k_ids"], np.int32),
                                np.asarray(r["top_k_logprobs"], np.float32)))
            return out

        def read_sidecar():
            reader, out = TopKReader(), []
            with open(sidecar_path) as f:
                for line in f:
                    out.append(topk_arrays(json.loads(line), tmp, reader))
            return out

        for (a_ids, a_lp), (b_ids, b_lp) in zip(read_json(), read_sidecar(), strict=True):
            assert (a_ids == b_ids).all() and np.abs(a_lp - b_lp).max() <= 2 ** -7
        secs = interleaved({"json": read_json, "sidecar": read_sidecar}, args.rounds, warmups=1)
        pipeline_secs = _pipeline_read(tmp, json_path, sidecar_path, args)

    grid = np.linspace(-30, 0, 1_000_001, dtype=np.float32)
    synthetic = np.concatenate([lp.reshape(-1) for _, lp in data])
    import ml_dtypes

    def max_error(x, t):
        return float(np.abs(x.astype(t).astype(np.float32) - x).max())

    errors = {dtype: (max_error(grid, t), max_error(grid[grid >= -1], t), max_error(synthetic, t))
              for dtype, t in (("float16", np.float16), ("bfloat16", ml_dtypes.bfloat16))}

    per_token = {"JSON (inline lists, 6 decimals)": json_topk_bytes / total_tokens}
    per_token.update({f"sidecar int32 + {d}": b / total_tokens for d, b in sidecar_bytes.items()})
    print(f"{args.records} records, {total_tokens} tokens (~{total_tokens // args.records}/record),"
          f" top-{args.k}\n")
    print("| storage | bytes / token | vs JSON | 800k traces x 6k tokens |")
    print("|---|---|---|---|")
    json_bpt = per_token["JSON (inline lists, 6 decimals)"]
    for name, bpt in per_token.items():
        print(f"| {name} | {bpt:.1f} | {json_bpt / bpt:.2f}x smaller | "
              f"{800_000 * 6000 * bpt / 1e12:.2f} TB |".replace("| 1.00x smaller", "| 1.00x"))
    print(f"\n| read {args.records} records' top-k arrays | seconds | tokens / s |")
    print("|---|---|---|")
    for name in ("json", "sidecar"):
        print(f"| {name} | {secs[name]:.3f} | {total_tokens / secs[name]:,.0f} |")
    ratio = secs["json"] / secs["sidecar"]
    print(f"\nsidecar reads {ratio:.1f}x faster (both parse each record's JSON line)\n")
    print(f"| offline-KD examples (top-{args.k}) from a curated JSONL, `encode_example` | "
          "seconds | tokens / s |")
    print("|---|---|---|")
    for name in ("json", "sidecar"):
        print(f"| {name} | {pipeline_secs[name]:.3f} | "
              f"{total_tokens / pipeline_secs[name]:,.0f} |")
    print(f"\nin the training pipeline the sidecar is "
          f"{pipeline_secs['json'] / pipeline_secs['sidecar']:.1f}x faster\n")
    print("| logprob dtype | max abs error in [-30, 0] | in [-1, 0] | synthetic logprobs |")
    print("|---|---|---|---|")
    for dtype, (g, top, s) in errors.items():
        print(f"| {dtype} | {g:.2e} | {top:.2e} | {s:.2e} |")
    if args.write:
        append_row([f"top-{args.k} storage, {args.records} records x ~{args.tokens} tokens",
                    f"JSON {json_bpt:.1f} B/token", f"int32+float16 "
                    f"{per_token['sidecar int32 + float16']:.1f} B/token",
                    f"{json_bpt / per_token['sidecar int32 + float16']:.2f}x smaller",
                    f"read {ratio:.1f}x faster", f"float16 max err {errors['float16'][0]:.1e}"])


def _pipeline_read(tmp: str, json_path: str, sidecar_path: str, args) -> dict:
    """Seconds to encode every record for offline KD, from each JSONL (median)."""
    import pathlib
    from distill_jax.chat import ChatFormat
    from distill_jax.data.sft import encode_example
    from distill_jax.data.sources import JsonlSource
    from distill_jax.data.topk_store import TopKReader
    from distill_jax.tokenizer import load_tokenizer
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from tests.tiny_models import arithmetic_tokenizer
    fmt = ChatFormat.create(load_tokenizer(arithmetic_tokenizer(pathlib.Path(tmp))))

    def encode_all(path):
        source, reader = JsonlSource(path), TopKReader()
        return lambda: [encode_example(source[k], fmt, args.k, reader)
                        for k in range(len(source))]

    steps = {"json": encode_all(json_path), "sidecar": encode_all(sidecar_path)}
    a, b = steps["json"](), steps["sidecar"]()
    assert all((x["topk_ids"] == y["topk_ids"]).all() for x, y in zip(a, b, strict=True))
    return interleaved(steps, args.rounds, warmups=1)


if __name__ == "__main__":
    main()
