"""The curated dataset as a tensorflow-datasets builder (array_record files).

Written by the rejection stage from its JSONL export; read anywhere with

    import tensorflow_datasets as tfds
    ds = tfds.data_source("curated_traces", data_dir=f"{filter_output_dir}/tfds", split="train")
    ds[0]["response"]   # bytes (tfds Text); top_k_* are numpy arrays

which needs neither TensorFlow nor this package. Examples are stored in the
order tfds' key hashing gives (a fixed, deterministic order); `prompt_id` and
`sample_index` identify each one.

`token_ids` are the teacher's generated tokens (without `assistant_prefix`,
the opening of the response that was part of the prompt, e.g. "<think>\n");
`top_k_ids` (int32) / `top_k_logprobs` (float16 since 1.1.0, the precision the
sampler's sidecars keep; cast with `np.asarray(x, np.float32)`) are aligned with
them, [num_tokens, K], and are [0, 0] when the teacher stored none.

The JSONL's records carry their top-k either as a ref to a binary sidecar beside
the JSONL (`"top_k": {...}`, see `data/topk_store.py`) or as inline lists (older
shards); both are read with `topk_arrays`.
"""
from __future__ import annotations

import json
import os

import numpy as np
import tensorflow_datasets as tfds

from distill_jax import storage
from distill_jax.data.topk_store import TopKReader, topk_arrays

NAME = "curated_traces"
TEXT_FIELDS = ("prompt_id", "source", "kind", "problem", "prompt", "assistant_prefix", "response",
               "final_answer", "teacher_id")


class CuratedTraces(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Teacher traces that survived rejection filtering (one train split).

    Not registered by name: `tfds.data_source("curated_traces", data_dir=...)` then
    always reads the dataset from its files (features as written, the newest version
    in data_dir), so a 1.0.0 dataset (float32 logprobs) stays readable in a process
    that imported this module.
    """

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "prompt, response, final answer, source, teacher top-k logprobs",
                     "1.1.0": "top_k_logprobs stored as float16 (were float32)"}

    def __init__(self, *, jsonl_path: str | None = None, **kwargs):
        self._jsonl_path = jsonl_path
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        features = {name: tfds.features.Text() for name in TEXT_FIELDS}
        features.update(
            sample_index=np.int32, num_tokens=np.int32,
            token_ids=tfds.features.Tensor(shape=(None,), dtype=np.int32),
            top_k_ids=tfds.features.Tensor(shape=(None, None), dtype=np.int32, encoding="zlib"),
            top_k_logprobs=tfds.features.Tensor(shape=(None, None), dtype=np.float16,
                                                encoding="zlib"))
        return tfds.core.DatasetInfo(builder=self, description=__doc__,
                                     features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        del dl_manager
        if not self._jsonl_path:
            raise ValueError("CuratedTraces is built by distill-filter (jsonl_path not set)")
        return {"train": self._generate_examples(self._jsonl_path)}

    def _generate_examples(self, path):
        local = storage.is_local(path)
        base_dir = os.path.dirname(os.path.abspath(path)) if local else storage.dirname(path)
        reader = TopKReader()
        with storage.open(path, "r", encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                yield f"{r['prompt_id']}/{r['sample_index']}", _example(r, base_dir, reader)


def _example(r: dict, base_dir: str, reader: TopKReader | None = None) -> dict:
    ex = {name: str(r.get(name) or "") for name in TEXT_FIELDS}
    ex["sample_index"] = int(r["sample_index"])
    ex["num_tokens"] = int(r.get("num_tokens") or 0)
    ex["token_ids"] = np.asarray(r.get("token_ids") or [], np.int32)
    top = topk_arrays(r, base_dir, reader)
    if top is not None and top[0].size:
        ex["top_k_ids"] = top[0]
        ex["top_k_logprobs"] = top[1].astype(np.float16)
    else:
        ex["top_k_ids"] = np.zeros((0, 0), np.int32)
        ex["top_k_logprobs"] = np.zeros((0, 0), np.float16)
    return ex


def build_curated_dataset(jsonl_path: str, data_dir: str) -> str:
    """Writes the array_record dataset under data_dir; returns its version directory.

    data_dir must be local: array_record writes POSIX files. For a bucket, build in a
    local directory and publish it (`storage.publish_dir`, as distill-filter does)."""
    if not storage.is_local(data_dir):
        raise ValueError(f"{data_dir}: the tfds dataset is built in a local directory "
                         "(array_record writes only POSIX files); build it locally and "
                         "upload it with distill_jax.storage.publish_dir")
    builder = CuratedTraces(jsonl_path=jsonl_path, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(download_mode=tfds.GenerateMode.REUSE_CACHE_IF_EXISTS))
    return str(builder.data_path)
