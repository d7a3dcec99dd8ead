"""Hugging Face checkpoints in and out: config.json + (sharded) safetensors.

Loading reads tensors through memmaps and, with a mesh, builds each sharded
array with `jax.make_array_from_callback`, so every device reads only its own
slice and no full host copy of the model is ever made. Saving streams one
tensor at a time into files of at most `max_shard_bytes`, written atomically,
in the layout transformers' `from_pretrained` expects.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.fileio import write_json_atomic
from distill_jax.models.config import ModelConfig, config_from_hf, to_hf_config
from distill_jax.models.safetensors_io import CheckpointError, SafetensorsFile, write_safetensors
from distill_jax.models.transformer import param_logical_axes, param_shapes

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Tensors some exporters add that carry nothing the model needs.
_IGNORABLE_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclasses.dataclass(frozen=True)
class _TensorMap:
    """How one of our params maps onto HF tensors (one per layer when stacked)."""

    path: tuple[str, ...]       # path in our params pytree
    hf_name: str                # with "{i}" for the layer index when stacked
    stacked: bool
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


def _identity(x):
    return x


def _tensor_maps(cfg: ModelConfig) -> list[_TensorMap]:
    d, h, kv, dh = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    maps = [_TensorMap(("embedding",), "model.embed_tokens.weight", False, _identity, _identity)]

    def layer(path, name, to_ours=_identity, to_hf=_identity):
        maps.append(_TensorMap(("layers",) + path, f"model.layers.{{i}}.{name}", True, to_ours,
                               to_hf))

    layer(("input_norm", "scale"), "input_layernorm.weight")
    for proj, heads in (("q", h), ("k", kv), ("v", kv)):
        # HF Linear weight is [out=heads*head_dim, in=hidden]; ours is [hidden, heads, head_dim].
        layer(("attn", f"{proj}_kernel"), f"self_attn.{proj}_proj.weight",
              lambda w, n=heads: w.T.reshape(d, n, dh),
              lambda w, n=heads: w.reshape(d, n * dh).T)
        if cfg.qkv_bias:
            layer(("attn", f"{proj}_bias"), f"self_attn.{proj}_proj.bias",
                  lambda b, n=heads: b.reshape(n, dh), lambda b, n=heads: b.reshape(n * dh))
    layer(("attn", "o_kernel"), "self_attn.o_proj.weight",
          lambda w: w.T.reshape(h, dh, d), lambda w: w.reshape(h * dh, d).T)
    if cfg.o_bias:
        layer(("attn", "o_bias"), "self_attn.o_proj.bias")
    if cfg.qk_norm:
        layer(("attn", "q_norm", "scale"), "self_attn.q_norm.weight")
        layer(("attn", "k_norm", "scale"), "self_attn.k_norm.weight")
    layer(("post_attn_norm", "scale"), "post_attention_layernorm.weight")
    for proj in ("gate", "up", "down"):
        layer(("mlp", f"{proj}_kernel"), f"mlp.{proj}_proj.weight", np.transpose, np.transpose)
        if cfg.mlp_bias:
            layer(("mlp", f"{proj}_bias"), f"mlp.{proj}_proj.bias")
    maps.append(_TensorMap(("final_norm", "scale"), "model.norm.weight", False, _identity,
                           _identity))
    if not cfg.tie_word_embeddings:
        maps.append(_TensorMap(("lm_head",), "lm_head.weight", False, np.transpose, np.transpose))
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
    index_path = os.path.join(path, INDEX_FILE)
    single_path = os.path.join(path, SINGLE_FILE)
    if os.path.exists(index_path):
        try:
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index_path}: unreadable safetensors index ({e})") from e
        files: dict[str, SafetensorsFile] = {}
        located = {}
        for name, fname in weight_map.items():
            if fname not in files:
                fpath = os.path.join(path, fname)
                if not os.path.exists(fpath):
                    raise CheckpointError(f"{index_path} maps tensor {name!r} to {fname}, "
                                          "which does not exist")
                files[fname] = SafetensorsFile(fpath)
            if name not in files[fname].names():
                raise CheckpointError(f"{index_path} maps tensor {name!r} to {fname}, "
                                      "which does not contain it")
            located[name] = files[fname]
        return located
    candidates = [single_path] if os.path.exists(single_path) else sorted(
        glob.glob(os.path.join(path, "*.safetensors")))
    if not candidates:
        others = [os.path.basename(p) for p in glob.glob(os.path.join(path, "*.bin"))]
        hint = f" (found {others}: convert them to safetensors first)" if others else ""
        raise CheckpointError(f"no safetensors weights in {path}{hint}")
    located = {}
    for fpath in candidates:
        st = SafetensorsFile(fpath)
        for name in st.names():
            located[name] = st
    return located


def read_hf_config(path: str) -> dict[str, Any]:
    config_path = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    if not os.path.exists(config_path):
        raise CheckpointError(f"{path} has no config.json")
    try:
        with open(config_path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path}: invalid JSON ({e})") from e


def load_hf_checkpoint(path: str, dtype: Any = jnp.float32, mesh: jax.sharding.Mesh | None = None,
                       rules=None, **config_overrides):
    """Reads an HF Llama/Qwen checkpoint directory -> (ModelConfig, params).

    `dtype` is the dtype params are stored in (the config's `param_dtype`);
    with `mesh`, params are created sharded by their logical axes.
    Everything about the files is validated before any tensor is read.
    """
    path = str(path)
    try:
        cfg = config_from_hf(read_hf_config(path), param_dtype=jnp.dtype(dtype).name,
                             **config_overrides)
    except ValueError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{os.path.join(path, 'config.json')}: {e}") from e
    located = _open_checkpoint(path)
    maps = _tensor_maps(cfg)
    shapes = param_shapes(cfg)

    expected: dict[str, tuple[int, ...]] = {}
    for m in maps:
        ours = _get_path(shapes, m.path).shape
        per_tensor = ours[1:] if m.stacked else ours
        hf_shape = m.to_hf(np.empty(per_tensor, np.int8)).shape
        names = [m.hf_name.format(i=i) for i in range(cfg.num_layers)] if m.stacked else [m.hf_name]
        for name in names:
            expected[name] = hf_shape
    missing = [n for n in expected if n not in located]
    if missing:
        raise CheckpointError(f"{path}: missing {len(missing)} tensor(s) the config requires, "
                              f"e.g. {missing[:5]}")
    extra = [n for n in located if n not in expected and not n.endswith(_IGNORABLE_SUFFIXES)
             and not (cfg.tie_word_embeddings and n == "lm_head.weight")]
    if extra:
        raise CheckpointError(f"{path}: {len(extra)} tensor(s) not in a {cfg.model_type} model "
                              f"with this config, e.g. {extra[:5]}")
    for name, shape in expected.items():
        got = located[name].shape(name)
        if got != shape:
            raise CheckpointError(f"{located[name].path}: tensor {name!r} has shape {list(got)}, "
                                  f"expected {list(shape)} from config.json")

    target = jnp.dtype(dtype)
    shardings = None
    if mesh is not None:
        from distill_jax import sharding
        shardings = sharding.logical_to_shardings(param_logical_axes(cfg), mesh, rules,
                                                  shapes=shapes)

    def read(m: _TensorMap, layer: int | None) -> np.ndarray:
        name = m.hf_name.format(i=layer) if layer is not None else m.hf_name
        return m.to_ours(located[name].get(name))

    params: dict = {}
    for m in maps:
        shape = _get_path(shapes, m.path).shape
        if shardings is None:
            if m.stacked:
                value = np.stack([read(m, i).astype(target) for i in range(cfg.num_layers)])
            else:
                value = read(m, None).astype(target)
            array = jnp.asarray(value)
        else:
            def callback(index, m=m):
                if m.stacked:
                    layers = range(cfg.num_layers)[index[0]]
                    return np.stack([read(m, i)[index[1:]].astype(target) for i in layers])
                return read(m, None)[index].astype(target)
            array = jax.make_array_from_callback(shape, _get_path(shardings, m.path), callback)
        _set_path(params, m.path, array)
    return cfg, params


def save_hf_checkpoint(path: str, cfg: ModelConfig, params, dtype: Any = None,
                       max_shard_bytes: int = 5 * 2**30) -> list[str]:
    """Writes config.json + safetensors loadable by transformers' `from_pretrained`.

    Files above `max_shard_bytes` are split as model-0000k-of-0000n.safetensors
    with an index. Each file is written atomically; files of an earlier save that
    the new one does not use are removed. Returns the written file names.
    """
    path = str(path)
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
    entries: list[tuple[str, _TensorMap, int | None]] = []
    for m in maps:
        if not m.stacked and m.path[0] == "embedding":
            entries.append((m.hf_name, m, None))
    for i in range(cfg.num_layers):
        entries += [(m.hf_name.format(i=i), m, i) for m in maps if m.stacked]
    entries += [(m.hf_name, m, None) for m in maps if not m.stacked and m.path[0] != "embedding"]

    def fetch(m: _TensorMap, layer: int | None) -> np.ndarray:
        value = _get_path(params, m.path)
        if layer is not None:
            value = value[layer]
        return m.to_hf(np.asarray(jax.device_get(value))).astype(out_dtype)

    def hf_shape(m: _TensorMap) -> tuple[int, ...]:
        ours = _get_path(shapes, m.path).shape
        return m.to_hf(np.empty(ours[1:] if m.stacked else ours, np.int8)).shape

    shards: list[list[tuple[str, _TensorMap, int | None]]] = [[]]
    shard_bytes = 0
    total = 0
    for entry in entries:
        nbytes = int(np.prod(hf_shape(entry[1]))) * out_dtype.itemsize
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
            specs = [(n, out_dtype, hf_shape(m)) for n, m, _ in shard]
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
    os.makedirs(path, exist_ok=True)
    write_json_atomic(os.path.join(path, "generation_config.json"), config)
