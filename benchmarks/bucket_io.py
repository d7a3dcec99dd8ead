"""What the path layer costs: the same work on a local directory and on the fake
object store (distill_jax/fake_bucket.py, a bucket's semantics on local disk), in one
process, alternating round by round (benchmarks/common.interleaved).

  load    load_hf_checkpoint of the 26M-parameter benchmark model (float32, ~105 MB):
          local memmaps against one ranged read per tensor; also with a 4-device mesh
          (fsdp 4), where each host reads the rows its devices hold.
  shards  100 generation-shard-sized JSONL files (~1 MB each) written atomically:
          temp name + fsync + rename against spool + whole-object upload.

The fake store is local disk, so the ratios are the layer's own overhead (spooling,
fsspec, one read per tensor instead of page faults), not a network's: a real bucket
adds its latency per request and its bandwidth per byte (BENCHMARKS.md has the
arithmetic for a 7B checkpoint).

  XLA_FLAGS=--xla_force_host_platform_device_count=4 python benchmarks/bucket_io.py \
      [--rounds 5] [--write]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402

from benchmarks.common import append_row, bench_model_config, interleaved  # noqa: E402
from distill_jax import models, sharding, storage  # noqa: E402
from distill_jax.fake_bucket import ROOT_ENV  # noqa: E402


def _counting_reads():
    """Wraps storage.read_range to count requests and bytes; returns the counters."""
    counts = {"requests": 0, "bytes": 0}
    original = storage.read_range

    def read_range(path, start, length):
        counts["requests"] += 1
        counts["bytes"] += length
        return original(path, start, length)
    storage.read_range = read_range
    return counts


def bench_load(work: str, rounds: int) -> dict:
    cfg = bench_model_config()
    local = os.path.join(work, "ckpt")
    models.save_hf_checkpoint(local, cfg, models.init_params(cfg, jax.random.key(0)))
    url = "fakebucket://bench/ckpt"
    storage.upload_tree(local, url)
    size = sum(os.path.getsize(os.path.join(local, f)) for f in os.listdir(local)
               if f.endswith(".safetensors"))
    mesh = sharding.make_mesh({"fsdp": -1}) \
        if len(jax.devices()) > 1 else None

    def load(path, with_mesh):
        _, params = models.load_hf_checkpoint(path, mesh=mesh if with_mesh else None)
        jax.block_until_ready(params)

    counts = _counting_reads()
    load(url, False)
    single = dict(counts)
    counts.update(requests=0, bytes=0)
    steps = {"local": lambda: load(local, False), "bucket": lambda: load(url, False)}
    if mesh is not None:
        load(url, True)
        steps.update({"local, mesh": lambda: load(local, True),
                      "bucket, mesh": lambda: load(url, True)})
    meshed = dict(counts)
    times = interleaved(steps, rounds, warmups=1)
    return {"times": times, "safetensors_bytes": size, "reads_single": single,
            "reads_mesh": meshed if mesh is not None else None, "devices": len(jax.devices())}


def bench_shards(work: str, rounds: int, count: int = 100) -> dict:
    line = '{"prompt_id": "p", "response": "' + "x" * 1000 + '"}\n'
    text = line * 1000                          # ~1 MB, a shard of 100 prompts x 10 samples
    local_dir = os.path.join(work, "shards")
    os.makedirs(local_dir, exist_ok=True)

    def write(base):
        for k in range(count):
            storage.write_text_atomic(storage.join(base, f"shard-{k:05d}.jsonl"), text)
    times = interleaved({"local": lambda: write(local_dir),
                         "bucket": lambda: write("fakebucket://bench/shards")}, rounds,
                        warmups=1)
    return {"times": times, "count": count, "bytes": len(text)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bucket_io-")
    os.environ[ROOT_ENV] = os.path.join(work, "bucket_root")
    try:
        load = bench_load(work, args.rounds)
        shards = bench_shards(work, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    t = load["times"]
    print(f"load_hf_checkpoint, {load['safetensors_bytes'] / 1e6:.1f} MB of safetensors "
          f"({args.rounds} rounds, median s):")
    print(f"  local {t['local']:.3f}  bucket {t['bucket']:.3f}  "
          f"ratio {t['bucket'] / t['local']:.2f}; bucket reads: "
          f"{load['reads_single']['requests']} requests, {load['reads_single']['bytes']} bytes")
    if load["reads_mesh"]:
        print(f"  {load['devices']} devices (fsdp): local {t['local, mesh']:.3f}  bucket "
              f"{t['bucket, mesh']:.3f}  ratio {t['bucket, mesh'] / t['local, mesh']:.2f}; "
              f"bucket reads: {load['reads_mesh']['requests']} requests, "
              f"{load['reads_mesh']['bytes']} bytes")
    s = shards["times"]
    print(f"{shards['count']} shards of {shards['bytes'] / 1e6:.2f} MB written atomically "
          f"(median s): local {s['local']:.3f}  bucket {s['bucket']:.3f}  "
          f"ratio {s['bucket'] / s['local']:.2f}")
    if args.write:
        append_row(["bucket_io load", f"{t['local']:.3f} s", f"{t['bucket']:.3f} s",
                    f"{t['bucket'] / t['local']:.2f}"])
        append_row(["bucket_io shards", f"{s['local']:.3f} s", f"{s['bucket']:.3f} s",
                    f"{s['bucket'] / s['local']:.2f}"])


if __name__ == "__main__":
    main()
