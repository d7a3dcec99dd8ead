"""Hugging Face checkpoints in and out: config.json + (sharded) safetensors.

Loading reads tensors through memmaps and, with a mesh, builds each sharded
array with `jax.make_array_from_callback`, so every device reads only its own
slice and no full host copy of the model is ever made. Saving streams one
tensor at a time into files of at most `max_shard_bytes`, written atomically,
in the layout transformers' `from_pretrained` expects.

Mixture-of-experts models use the hub's layout: one tensor per expert
(`model.layers.{i}.mlp.experts.{j}.{gate,up,down}_proj.weight`), which is also
what transformers' `save_pretrained` writes; they are stacked here into one
[layers, experts, ...] leaf per projection, and with a mesh each device reads
only the layers and experts of its own shard. DeepSeek-V3's first dense layers
are a separate stack (`dense_layers`, see `ModelConfig.layer_stacks`).

FP8 checkpoints (DeepSeek-V3/R1 as published: `quantization_config` with
quant_method "fp8", fmt "e4m3", `weight_block_size` [128, 128]) store each
Linear weight as F8_E4M3 beside a float32 `<name>_scale_inv` of shape
[ceil(out/128), ceil(in/128)]; the weight is w * scale_inv repeated over each
block (the last block may be partial). Each tensor is dequantised on its own as
it is read (with a mesh: just the rows and columns a device's slice needs), so
the model is never in host memory at once. Saving always writes plain floats.

DeepSeek's multi-token-prediction layers (`model.layers.{N}.*` for N from
num_hidden_layers on, `num_nextn_predict_layers` of them) are a training-time /
speculative-decoding head this library does not use: their tensors are skipped
on load, with one log line saying how many.

A checkpoint may be a bucket URL (`gs://...`, any path `storage` takes). Loading
never copies it to local disk: config and index are read as objects, each
safetensors header with small ranged reads, and each tensor with one ranged
read, or, with a mesh, just the rows of it that a device's slice touches (rows
are contiguous; a slice that needs only some columns still reads whole rows).
No commit marker is required, since checkpoints uploaded with gsutil have none. Saving
to a bucket writes a local temporary directory and publishes it (whole objects,
then the commit marker): `staged_export`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import logging
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import storage
from distill_jax.fileio import write_json_atomic
from distill_jax.models.config import ModelConfig, config_from_hf, to_hf_config
from distill_jax.models.safetensors_io import (FP8_DTYPES, CheckpointError, SafetensorsFile,
                                               write_safetensors)
from distill_jax.models.transformer import param_logical_axes, param_shapes

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Tensors some exporters add that carry nothing the model needs.
_IGNORABLE_SUFFIXES = ("rotary_emb.inv_freq",)
SCALE_SUFFIX = "_scale_inv"
_FP8_FORMATS = ("e4m3", "e5m2")
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.")


@dataclasses.dataclass(frozen=True)
class _TensorMap:
    """How one of our params maps onto HF tensors.

    `hf_name` holds "{i}" for the HF layer index when the leaf is stacked over
    `layers` (first HF layer, count): our leading axis k is HF layer first + k;
    and "{j}" for the expert when it is also stacked over `experts`: our next
    axis. `to_ours`/`to_hf` convert one HF tensor (one layer, one expert).
    """

    path: tuple[str, ...]       # path in our params pytree
    hf_name: str
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    layers: tuple[int, int] | None = None
    experts: int | None = None
    save_f32: bool = False      # the hub (and transformers) keep it in float32

    @property
    def stacked(self) -> bool:
        return self.layers is not None

    @property
    def lead(self) -> int:
        """How many leading axes of our leaf index HF tensors (layers, experts)."""
        return (self.layers is not None) + (self.experts is not None)

    def name(self, k: int | None = None, j: int | None = None) -> str:
        """The HF tensor of our stacked entry k (layer) / j (expert)."""
        if self.layers is None:
            return self.hf_name
        return self.hf_name.format(i=self.layers[0] + k, j=j)

    def entries(self) -> Iterator[tuple[tuple[int, ...], str]]:
        """(index into our leaf's leading axes, HF name) for every HF tensor."""
        if self.layers is None:
            yield (), self.hf_name
            return
        for k in range(self.layers[1]):
            if self.experts is None:
                yield (k,), self.name(k)
            else:
                for j in range(self.experts):
                    yield (k, j), self.name(k, j)

    def hf_shape(self, ours: Sequence[int]) -> tuple[int, ...]:
        return self.to_hf(np.empty(tuple(ours)[self.lead:], np.int8)).shape


def _identity(x):
    return x


def _heads_in(d: int, n: int, dh: int):
    """HF Linear [n*dh, d] <-> ours [d, n, dh] (a projection into heads)."""
    return (lambda w: w.T.reshape(d, n, dh)), (lambda w: w.reshape(d, n * dh).T)


def _heads_out(n: int, dh: int, d: int):
    """HF Linear [d, n*dh] <-> ours [n, dh, d] (the projection out of heads)."""
    return (lambda w: w.T.reshape(n, dh, d)), (lambda w: w.reshape(n * dh, d).T)


def _tensor_maps(cfg: ModelConfig) -> list[_TensorMap]:
    d, h, kv, dh = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    maps = [_TensorMap(("embedding",), "model.embed_tokens.weight", _identity, _identity)]
    for stack, first, count, is_moe in cfg.layer_stacks:
        def layer(path, name, to_ours=_identity, to_hf=_identity, experts=None, save_f32=False,
                  stack=stack, first=first, count=count):
            maps.append(_TensorMap((stack,) + path, f"model.layers.{{i}}.{name}", to_ours, to_hf,
                                   (first, count), experts, save_f32))

        layer(("input_norm", "scale"), "input_layernorm.weight")
        mla = cfg.mla
        if mla is not None:
            qk = mla.qk_head_dim
            if mla.q_lora_rank is None:
                layer(("attn", "q_kernel"), "self_attn.q_proj.weight", *_heads_in(d, h, qk))
            else:
                qr = mla.q_lora_rank
                layer(("attn", "q_a_kernel"), "self_attn.q_a_proj.weight", np.transpose,
                      np.transpose)
                layer(("attn", "q_a_norm", "scale"), "self_attn.q_a_layernorm.weight")
                layer(("attn", "q_b_kernel"), "self_attn.q_b_proj.weight", *_heads_in(qr, h, qk))
            layer(("attn", "kv_a_kernel"), "self_attn.kv_a_proj_with_mqa.weight", np.transpose,
                  np.transpose)
            layer(("attn", "kv_a_norm", "scale"), "self_attn.kv_a_layernorm.weight")
            layer(("attn", "kv_b_kernel"), "self_attn.kv_b_proj.weight",
                  *_heads_in(mla.kv_lora_rank, h, mla.qk_nope_head_dim + mla.v_head_dim))
            layer(("attn", "o_kernel"), "self_attn.o_proj.weight",
                  *_heads_out(h, mla.v_head_dim, d))
        else:
            for proj, heads in (("q", h), ("k", kv), ("v", kv)):
                # HF Linear weight is [out=heads*head_dim, in=hidden];
                # ours is [hidden, heads, head_dim].
                layer(("attn", f"{proj}_kernel"), f"self_attn.{proj}_proj.weight",
                      *_heads_in(d, heads, dh))
                if cfg.qkv_bias:
                    layer(("attn", f"{proj}_bias"), f"self_attn.{proj}_proj.bias",
                          lambda b, n=heads: b.reshape(n, dh), lambda b, n=heads: b.reshape(n * dh))
            layer(("attn", "o_kernel"), "self_attn.o_proj.weight", *_heads_out(h, dh, d))
            if cfg.o_bias:
                layer(("attn", "o_bias"), "self_attn.o_proj.bias")
            if cfg.qk_norm:
                layer(("attn", "q_norm", "scale"), "self_attn.q_norm.weight")
                layer(("attn", "k_norm", "scale"), "self_attn.k_norm.weight")
        layer(("post_attn_norm", "scale"), "post_attention_layernorm.weight")
        if is_moe:
            moe = cfg.moe
            # transformers keeps DeepSeek's router in float32 (_keep_in_fp32_modules_strict).
            f32 = moe.scoring == "sigmoid"
            layer(("mlp", "router_kernel"), "mlp.gate.weight", np.transpose, np.transpose,
                  save_f32=f32)
            if moe.scoring == "sigmoid":
                layer(("mlp", "router_bias"), "mlp.gate.e_score_correction_bias", save_f32=True)
            for proj in ("gate", "up", "down"):
                layer(("mlp", f"{proj}_kernel"), f"mlp.experts.{{j}}.{proj}_proj.weight",
                      np.transpose, np.transpose, experts=moe.num_experts)
            if moe.num_shared_experts:
                for proj in ("gate", "up", "down"):
                    layer(("mlp", "shared", f"{proj}_kernel"),
                          f"mlp.shared_experts.{proj}_proj.weight", np.transpose, np.transpose)
        else:
            for proj in ("gate", "up", "down"):
                layer(("mlp", f"{proj}_kernel"), f"mlp.{proj}_proj.weight", np.transpose,
                      np.transpose)
                if cfg.mlp_bias:
                    layer(("mlp", f"{proj}_bias"), f"mlp.{proj}_proj.bias")
    maps.append(_TensorMap(("final_norm", "scale"), "model.norm.weight", _identity, _identity))
    if not cfg.tie_word_embeddings:
        maps.append(_TensorMap(("lm_head",), "lm_head.weight", np.transpose, np.transpose))
    return maps


def _get_path(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set_path(tree, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _open_checkpoint(path: str) -> dict[str, SafetensorsFile]:
    """Tensor name -> the file holding it."""
    index_path = storage.join(path, INDEX_FILE)
    single_path = storage.join(path, SINGLE_FILE)
    if storage.exists(index_path):
        try:
            weight_map = json.loads(storage.read_text(index_path))["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index_path}: unreadable safetensors index ({e})") from e
        files: dict[str, SafetensorsFile] = {}
        located = {}
        for name, fname in weight_map.items():
            if fname not in files:
                fpath = storage.join(path, fname)
                if not storage.exists(fpath):
                    raise CheckpointError(f"{index_path} maps tensor {name!r} to {fname}, "
                                          "which does not exist")
                files[fname] = SafetensorsFile(fpath)
            if name not in files[fname].names():
                raise CheckpointError(f"{index_path} maps tensor {name!r} to {fname}, "
                                      "which does not contain it")
            located[name] = files[fname]
        return located
    candidates = [single_path] if storage.exists(single_path) else storage.glob(
        storage.join(path, "*.safetensors"))
    if not candidates:
        others = [storage.basename(p) for p in storage.glob(storage.join(path, "*.bin"))]
        hint = f" (found {others}: convert them to safetensors first)" if others else ""
        raise CheckpointError(f"no safetensors weights in {path}{hint}")
    located = {}
    for fpath in candidates:
        st = SafetensorsFile(fpath)
        for name in st.names():
            located[name] = st
    return located


def _check_backend(path: str) -> None:
    """A URL whose scheme has no installed backend fails before anything is read."""
    try:
        storage.check_path(path, "checkpoint")
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def _check_not_half_published(path: str) -> None:
    """A bucket export that our own `publish_dir` is replacing (or was killed
    replacing) may be half old and half new, with matching shapes: refused. (A
    directory without any marker, uploaded by gsutil, loads.)"""
    if storage.is_being_published(path):
        raise CheckpointError(f"{path}: an export is being written there (or its writer was "
                              f"killed): {storage.PUBLISHING_MARKER} is present; rerun the "
                              "export or load an earlier copy")


def read_hf_config(path: str) -> dict[str, Any]:
    path = str(path)
    _check_backend(path)
    _check_not_half_published(path)
    config_path = storage.join(path, "config.json")
    if not storage.isdir(path):
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    if not storage.exists(config_path):
        raise CheckpointError(f"{path} has no config.json")
    try:
        return json.loads(storage.read_text(config_path))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path}: invalid JSON ({e})") from e


def _fp8_block_size(hf: dict[str, Any], config_path: str) -> tuple[int, int] | None:
    """The weight block of an FP8 checkpoint's quantization_config (None: not quantised)."""
    qc = hf.get("quantization_config")
    if not qc:
        return None
    method = qc.get("quant_method")
    if method != "fp8":
        raise CheckpointError(f"{config_path}: quantization_config quant_method={method!r} is not "
                              "supported (only block-scaled 'fp8', as DeepSeek-V3/R1 ship)")
    fmt = qc.get("fmt", "e4m3")
    if fmt not in _FP8_FORMATS:
        raise CheckpointError(f"{config_path}: quantization_config fmt={fmt!r} is not supported "
                              f"(supported: {list(_FP8_FORMATS)})")
    scheme = qc.get("activation_scheme", "dynamic")
    if scheme != "dynamic":
        raise CheckpointError(f"{config_path}: quantization_config activation_scheme={scheme!r} "
                              "is not supported (only 'dynamic': no activation scales)")
    block = qc.get("weight_block_size")
    if (not isinstance(block, (list, tuple)) or len(block) != 2
            or not all(isinstance(b, int) and b > 0 for b in block)):
        raise CheckpointError(f"{config_path}: quantization_config weight_block_size={block!r} "
                              "must be two positive integers (per-block scales only)")
    return int(block[0]), int(block[1])


def _dequantize(w: np.ndarray, scale: np.ndarray, block: tuple[int, int],
                rows: tuple[int, int] | None = None,
                cols: tuple[int, int] | None = None) -> np.ndarray:
    """float32 w[rows, cols] * scale_inv repeated over `block`-sized blocks (the last block
    of each axis may be partial), one row-block at a time: no full-size scale copy."""
    r0, r1 = rows if rows is not None else (0, w.shape[0])
    c0, c1 = cols if cols is not None else (0, w.shape[1])
    b0, b1 = block
    out = np.asarray(w[r0:r1, c0:c1], np.float32)
    col_scale = np.asarray(scale[:, c0 // b1: -(-c1 // b1)], np.float32)
    col_idx = np.arange(c0, c1) // b1 - c0 // b1
    for rb in range(r0 // b0, -(-r1 // b0)):
        lo, hi = max(rb * b0, r0) - r0, min((rb + 1) * b0, r1) - r0
        out[lo:hi] *= col_scale[rb, col_idx]
    return out


def _hf_axis_bounds(m: _TensorMap, hf_shape: tuple[int, ...], index: tuple,
                    axis: int) -> tuple[int, int]:
    """The range along `axis` of an HF tensor that our slice `index` of it touches,
    found by sending a broadcast (zero-copy) index grid through to_ours."""
    grid = np.arange(hf_shape[axis], dtype=np.int32)
    grid = np.broadcast_to(grid.reshape([-1 if a == axis else 1 for a in range(len(hf_shape))]),
                           hf_shape)
    picked = m.to_ours(grid)[index]
    return (int(picked.min()), int(picked.max()) + 1) if picked.size else (0, 0)


def _hf_bounds(m: _TensorMap, hf_shape: tuple[int, int], index: tuple) -> tuple[tuple[int, int],
                                                                              tuple[int, int]]:
    """The rows and columns of a 2-D HF tensor that our slice `index` of it touches."""
    return _hf_axis_bounds(m, hf_shape, index, 0), _hf_axis_bounds(m, hf_shape, index, 1)


def _read_rows(st: SafetensorsFile, name: str, runs: Sequence[tuple[int, int]]) -> np.ndarray:
    """HF tensor `name` holding at least the rows of `runs`: the whole tensor when
    they are all of it, else just them (one ranged read per run on a bucket) in an
    np.zeros of the full shape, which the OS backs with memory only where rows are
    written, so to_ours and indexing work on it unchanged."""
    shape = st.shape(name)
    if not shape or list(runs) == [(0, shape[0])]:
        return st.get(name)
    full = np.zeros(shape, st.dtype(name))
    for r0, r1 in runs:
        full[r0:r1] = st.rows(name, r0, r1)
    return full


def _row_runs(m: _TensorMap, hf_shape: tuple[int, ...],
              indices: Sequence[tuple]) -> list[tuple[int, int]]:
    """The rows of an HF tensor that our slices `indices` of it touch, as disjoint
    sorted runs (touching runs merged: each run is one ranged read)."""
    if not hf_shape:
        return []
    runs: list[tuple[int, int]] = []
    for r0, r1 in sorted(_hf_axis_bounds(m, hf_shape, index, 0) for index in indices):
        if r1 <= r0:
            continue
        if runs and r0 <= runs[-1][1]:
            runs[-1] = (runs[-1][0], max(runs[-1][1], r1))
        else:
            runs.append((r0, r1))
    return runs


def _full_index(index: tuple, ndim: int) -> tuple:
    return tuple(index) + (slice(None),) * (ndim - len(index))


def _index_key(index: tuple) -> tuple:
    # Slices are unhashable before Python 3.12.
    return tuple((i.start, i.stop, i.step) if isinstance(i, slice) else i for i in index)


def _host_shards(shape: tuple[int, ...], leaf_sharding) -> dict[tuple, tuple]:
    """The distinct slices of our leaf on this host's devices (replicas share one)."""
    shards: dict[tuple, tuple] = {}
    for index in leaf_sharding.addressable_devices_indices_map(shape).values():
        index = _full_index(index, len(shape))
        shards.setdefault(_index_key(index), index)
    return shards


def _position(index: tuple, at: tuple[int, ...], shape: tuple[int, ...]) -> tuple | None:
    """Where the HF tensor of (layer, expert) `at` lands in the shard `index` of our
    leaf; None when the shard does not hold it."""
    pos = []
    for axis, i in enumerate(at):
        held = range(*index[axis].indices(shape[axis]))
        if i not in held:
            return None
        pos.append(held.index(i))
    return tuple(pos)


def load_hf_checkpoint(path: str, dtype: Any = jnp.float32, mesh: jax.sharding.Mesh | None = None,
                       rules=None, **config_overrides):
    """Reads an HF Llama/Qwen2/Qwen3/Qwen3-MoE/DeepSeek-V3 checkpoint directory ->
    (ModelConfig, params).

    `dtype` is the dtype params are stored in (the config's `param_dtype`; leaves
    the model keeps in float32, such as the MoE router, stay float32); with
    `mesh`, params are created sharded by their logical axes. FP8 block-scaled
    weights are dequantised as they are read. Everything about the files is
    validated before any tensor is read.
    """
    path = str(path)
    config_path = storage.join(path, "config.json")
    hf = read_hf_config(path)
    try:
        cfg = config_from_hf(hf, param_dtype=jnp.dtype(dtype).name, **config_overrides)
    except ValueError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{config_path}: {e}") from e
    block = _fp8_block_size(hf, config_path)
    mtp_layers = int(hf.get("num_nextn_predict_layers") or 0) if cfg.mla is not None else 0
    located = _open_checkpoint(path)
    maps = _tensor_maps(cfg)
    shapes = param_shapes(cfg)

    expected: dict[str, tuple[int, ...]] = {}
    for m in maps:
        hf_shape = m.hf_shape(_get_path(shapes, m.path).shape)
        for _, name in m.entries():
            expected[name] = hf_shape
    missing = [n for n in expected if n not in located]
    if missing:
        raise CheckpointError(f"{path}: missing {len(missing)} tensor(s) the config requires, "
                              f"e.g. {missing[:5]}")

    def is_mtp(name: str) -> bool:
        match = _LAYER_RE.match(name)
        return (match is not None
                and cfg.num_layers <= int(match.group(1)) < cfg.num_layers + mtp_layers)

    mtp = [n for n in located if is_mtp(n)]
    extra = [n for n in located if n not in expected and not n.endswith(_IGNORABLE_SUFFIXES)
             and not (cfg.tie_word_embeddings and n == "lm_head.weight")
             and not (n.endswith(SCALE_SUFFIX) and n[:-len(SCALE_SUFFIX)] in expected)
             and not is_mtp(n)]
    if extra:
        raise CheckpointError(f"{path}: {len(extra)} tensor(s) not in a {cfg.model_type} model "
                              f"with this config, e.g. {extra[:5]}")
    quantized: set[str] = set()
    for name, shape in expected.items():
        st = located[name]
        got = st.shape(name)
        if got != shape:
            raise CheckpointError(f"{st.path}: tensor {name!r} has shape {list(got)}, "
                                  f"expected {list(shape)} from config.json")
        scale_name = name + SCALE_SUFFIX
        if st.dtype(name) in FP8_DTYPES:
            if block is None:
                raise CheckpointError(f"{st.path}: tensor {name!r} is {st.dtype(name)} but "
                                      f"{config_path} has no fp8 quantization_config")
            if len(shape) != 2:
                raise CheckpointError(f"{st.path}: FP8 tensor {name!r} of shape {list(shape)}: "
                                      "only 2-D (Linear) weights can carry block scales")
            if scale_name not in located:
                raise CheckpointError(f"{st.path}: FP8 tensor {name!r} has no {scale_name!r} "
                                      "(its block scales) in the checkpoint")
            want = (-(-shape[0] // block[0]), -(-shape[1] // block[1]))
            got = located[scale_name].shape(scale_name)
            if got != want:
                raise CheckpointError(
                    f"{located[scale_name].path}: tensor {scale_name!r} has shape {list(got)}, "
                    f"expected {list(want)} (blocks of {list(block)} over {name!r} "
                    f"{list(shape)})")
            quantized.add(name)
        elif scale_name in located:
            raise CheckpointError(f"{located[scale_name].path}: tensor {scale_name!r} scales "
                                  f"{name!r}, which is {st.dtype(name)}, not FP8")
    if mtp:
        log.info("%s: skipping %d tensor(s) of %d multi-token-prediction layer(s) "
                 "(model.layers.%d+): a training-time / speculative-decoding head, unused here",
                 path, len(mtp), mtp_layers, cfg.num_layers)

    shardings = None
    if mesh is not None:
        from distill_jax import sharding
        shardings = sharding.logical_to_shardings(param_logical_axes(cfg), mesh, rules,
                                                  shapes=shapes)

    def scales(name: str) -> np.ndarray:
        return located[name + SCALE_SUFFIX].get(name + SCALE_SUFFIX)

    def read(m: _TensorMap, name: str, index: tuple = ()) -> np.ndarray:
        """Our view of one HF tensor, sliced by `index` (over its own axes)."""
        return ours(m, name, located[name].get(name), index)

    def ours(m: _TensorMap, name: str, w: np.ndarray, index: tuple = (),
             scale: np.ndarray | None = None) -> np.ndarray:
        """Our slice `index` of HF tensor `name`, given as `w`, which holds (at least)
        every row the slice touches; `scale`: its FP8 block scales, if already read."""
        if name not in quantized:
            return m.to_ours(w)[index]
        if scale is None:
            scale = scales(name)
        if not index:
            return m.to_ours(_dequantize(w, scale, block))
        rows, cols = _hf_bounds(m, w.shape, index)
        # Only the rows and columns the slice touches are dequantised; np.zeros stays
        # unbacked by memory where it is never written.
        full = np.zeros(w.shape, np.float32)
        full[rows[0]:rows[1], cols[0]:cols[1]] = _dequantize(w, scale, block, rows, cols)
        return m.to_ours(full)[index]

    def bucket_leaf(m: _TensorMap, shape: tuple[int, ...], target: np.dtype,
                    leaf_sharding) -> jax.Array:
        """Our leaf, sharded, from bucket files. Unlike the memmap path, which reads per
        device, each HF tensor is read once per host, just the rows this host's shards
        touch, then scattered into those shards: devices that split a tensor's columns,
        or hold replicas, would otherwise each fetch the same bytes over the network."""
        shards = _host_shards(shape, leaf_sharding)
        out = {key: np.empty([len(range(*s.indices(n))) for s, n in zip(index, shape)], target)
               for key, index in shards.items()}
        for at, name in m.entries():
            users = [(key, pos, index[m.lead:]) for key, index in shards.items()
                     if (pos := _position(index, at, shape)) is not None]
            if not users:
                continue
            st = located[name]
            w = _read_rows(st, name, _row_runs(m, st.shape(name), [u[2] for u in users]))
            # Tiny (1/16384 of the weight's elements): read whole, once per tensor.
            scale = scales(name) if name in quantized else None
            for key, pos, rest in users:
                out[key][pos] = ours(m, name, w, rest, scale).astype(target)
        arrays = [jax.device_put(out[_index_key(_full_index(index, len(shape)))], device)
                  for device, index in leaf_sharding.addressable_devices_indices_map(shape).items()]
        return jax.make_array_from_single_device_arrays(shape, leaf_sharding, arrays)

    params: dict = {}
    for m in maps:
        leaf = _get_path(shapes, m.path)
        shape, target = tuple(leaf.shape), np.dtype(leaf.dtype)
        if shardings is None:
            value = np.empty(shape, target)
            for at, name in m.entries():
                value[at] = read(m, name)
            array = jnp.asarray(value)
            del value
        elif not storage.is_local(path):
            array = bucket_leaf(m, shape, target, _get_path(shardings, m.path))
        else:
            def callback(index, m=m, target=target):
                lead, rest = index[:m.lead], index[m.lead:]
                if not lead:
                    return read(m, m.name(), rest).astype(target)
                ks = range(m.layers[1])[lead[0]]
                js = range(m.experts)[lead[1]] if m.experts is not None else [None]
                out = [[read(m, m.name(k, j), rest).astype(target) for j in js] for k in ks]
                return np.stack([np.stack(row) if m.experts is not None else row[0]
                                 for row in out])
            array = jax.make_array_from_callback(shape, _get_path(shardings, m.path), callback)
        _set_path(params, m.path, array)
    return cfg, params


@contextlib.contextmanager
def staged_export(path: str) -> Iterator[str]:
    """A local directory to write an export into, which appears at `path` when the
    block succeeds.

    For a local `path` that is `path` itself (each file is written atomically in
    place). For a bucket, which has no rename, it is a temporary directory (under
    $TMPDIR: it must hold the whole export) that process 0 publishes: whole objects,
    then the commit marker; nothing is uploaded if the block raises. Write every file
    of one export (weights, tokenizer, generation config) inside one block, so the
    marker covers them all.
    """
    path = str(path)
    if storage.is_local(path):
        yield path
        return
    _check_backend(path)
    local = tempfile.mkdtemp(prefix="distill_jax-export-")
    try:
        yield local
        if jax.process_index() == 0:
            _publish_export(local, path)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def _publish_export(local: str, dest: str) -> None:
    """Publishes `local` at the bucket directory `dest`, replacing an earlier export
    as a local save does. Its marker is removed first, so no reader or resume trusts
    the mix of old and new objects while they are replaced; weight files of the old
    export that the new one lacks (a different sharding) are removed, as locally."""
    new = set(storage.walk_files(local))
    for stale in storage.glob(storage.join(dest, "model*.safetensors*")):
        if storage.basename(stale) not in new:
            storage.remove(stale)
    storage.publish_dir(local, dest)


def save_hf_checkpoint(path: str, cfg: ModelConfig, params, dtype: Any = None,
                       max_shard_bytes: int = 5 * 2**30) -> list[str]:
    """Writes config.json + safetensors loadable by transformers' `from_pretrained`.

    Files above `max_shard_bytes` are split as model-0000k-of-0000n.safetensors
    with an index. Each file is written atomically; files of an earlier save that
    the new one does not use are removed. Returns the written file names. `path`
    may be a bucket URL (see `staged_export`; call this inside one to export more
    files under the same commit marker).
    """
    with staged_export(str(path)) as directory:
        return _write_hf_checkpoint(directory, cfg, params, dtype, max_shard_bytes)


def _write_hf_checkpoint(path: str, cfg: ModelConfig, params, dtype: Any,
                         max_shard_bytes: int) -> list[str]:
    os.makedirs(path, exist_ok=True)
    maps = _tensor_maps(cfg)
    shapes = param_shapes(cfg)
    try:
        for m in maps:
            got = _get_path(params, m.path)
            want = _get_path(shapes, m.path).shape
            if tuple(got.shape) != tuple(want):
                raise CheckpointError(f"param {'/'.join(m.path)} has shape {tuple(got.shape)}, "
                                      f"the config needs {tuple(want)}")
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"params do not match the config: missing {e}") from e
    out_dtype = np.dtype(jnp.dtype(dtype if dtype is not None else cfg.param_dtype))

    # Same tensor order as transformers' state_dict: embeddings, layer by layer, final norm, head.
    entries: list[tuple[str, _TensorMap, tuple[int, ...]]] = []
    for m in maps:
        if not m.stacked and m.path[0] == "embedding":
            entries.append((m.hf_name, m, ()))
    by_layer: dict[int, list[tuple[str, _TensorMap, tuple[int, ...]]]] = {}
    for m in maps:
        if m.stacked:
            for at, name in m.entries():
                by_layer.setdefault(m.layers[0] + at[0], []).append((name, m, at))
    for i in sorted(by_layer):
        entries += by_layer[i]
    entries += [(m.hf_name, m, ()) for m in maps if not m.stacked and m.path[0] != "embedding"]

    def tensor_dtype(m: _TensorMap) -> np.dtype:
        return np.dtype(np.float32) if m.save_f32 else out_dtype

    def fetch(m: _TensorMap, at: tuple[int, ...]) -> np.ndarray:
        value = _get_path(params, m.path)
        if at:
            value = value[at]
        return m.to_hf(np.asarray(jax.device_get(value))).astype(tensor_dtype(m))

    def hf_shape(m: _TensorMap) -> tuple[int, ...]:
        return m.hf_shape(_get_path(shapes, m.path).shape)

    shards: list[list[tuple[str, _TensorMap, tuple[int, ...]]]] = [[]]
    shard_bytes = 0
    total = 0
    for entry in entries:
        nbytes = int(np.prod(hf_shape(entry[1]))) * tensor_dtype(entry[1]).itemsize
        if shards[-1] and shard_bytes + nbytes > max_shard_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(entry)
        shard_bytes += nbytes
        total += nbytes

    if len(shards) == 1:
        names = [SINGLE_FILE]
    else:
        names = [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
    if jax.process_index() == 0:
        for fname, shard in zip(names, shards):
            specs = [(n, tensor_dtype(m), hf_shape(m)) for n, m, _ in shard]
            write_safetensors(os.path.join(path, fname), specs=specs,
                              arrays=(fetch(m, i) for _, m, i in shard),
                              metadata={"format": "pt"})
        written = list(names)
        if len(shards) > 1:
            index = {"metadata": {"total_size": total},
                     "weight_map": {n: fname for fname, shard in zip(names, shards)
                                    for n, _, _ in shard}}
            write_json_atomic(os.path.join(path, INDEX_FILE), index)
            written.append(INDEX_FILE)
        for stale in glob.glob(os.path.join(path, "model*.safetensors*")):
            if os.path.basename(stale) not in written:
                os.remove(stale)
        write_json_atomic(os.path.join(path, "config.json"),
                           to_hf_config(cfg, torch_dtype=out_dtype.name))
        written.append("config.json")
        return written
    return []


def save_generation_config(path: str, bos_token_id: int | None,
                           eos_token_ids: Sequence[int], pad_token_id: int | None = None) -> None:
    """`generation_config.json`: the ids transformers' and vLLM's `generate` stop on.
    A model trained with one chat template stops on its end-of-turn token, which
    config.json's `eos_token_id` (the base model's) need not name."""
    if not eos_token_ids:
        raise ValueError(f"{path}: a generation config needs at least one stop id")
    config: dict[str, Any] = {"eos_token_id": [int(i) for i in eos_token_ids],
                              "_from_model_config": False}
    if bos_token_id is not None:
        config["bos_token_id"] = int(bos_token_id)
    if pad_token_id is not None:
        config["pad_token_id"] = int(pad_token_id)
    storage.makedirs(path)
    # On a bucket: one whole object, outside any commit marker (see `staged_export`).
    write_json_atomic(storage.join(path, "generation_config.json"), config)
