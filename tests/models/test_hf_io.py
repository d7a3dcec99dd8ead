"""Checkpoint loading: sharded loads, and clear errors on bad input."""
import json
import os
import struct

import jax
import numpy as np
import pytest

from distill_jax import models, sharding
from distill_jax.models.safetensors_io import (CheckpointError, SafetensorsFile,
                                               write_safetensors)
from tests.hf_reference import save_hf_model


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    save_hf_model("llama", path)
    return path


def _copy_checkpoint(src, dst):
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        with open(os.path.join(src, name), "rb") as f, open(os.path.join(dst, name), "wb") as g:
            g.write(f.read())
    return dst


def _rewrite_tensors(path, edit):
    """Rewrites model.safetensors after `edit(dict name->array)`."""
    st = SafetensorsFile(os.path.join(path, "model.safetensors"))
    tensors = {n: np.array(st.get(n)) for n in st.names()}
    edit(tensors)
    write_safetensors(os.path.join(path, "model.safetensors"), list(tensors.items()))


def test_sharded_load_equals_plain_load(llama_dir):
    _, plain = models.load_hf_checkpoint(llama_dir)
    mesh = sharding.make_mesh((2, 2, 2))
    cfg, sharded = models.load_hf_checkpoint(llama_dir, mesh=mesh)
    down = sharded["layers"]["mlp"]["down_kernel"]
    assert down.sharding.spec == jax.sharding.PartitionSpec(None, "tensor", "fsdp")
    assert len(down.addressable_shards) == 8
    assert down.addressable_shards[0].data.shape == (cfg.num_layers, 64, 32)
    for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(sharded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_missing_directory_and_config(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        models.load_hf_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no config.json"):
        models.load_hf_checkpoint(tmp_path)


def test_unsupported_model_type_names_it(llama_dir, tmp_path):
    path = _copy_checkpoint(llama_dir, tmp_path / "gpt")
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config.json.*'gpt_neox'"):
        models.load_hf_checkpoint(path)


def test_truncated_safetensors_names_file_and_tensor(llama_dir, tmp_path):
    path = _copy_checkpoint(llama_dir, tmp_path / "trunc")
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor '.*' ends at byte"):
        models.load_hf_checkpoint(path)


def test_corrupt_header_names_file(llama_dir, tmp_path):
    path = _copy_checkpoint(llama_dir, tmp_path / "corrupt")
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:20] = b"not json!!!!"
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors: unreadable safetensors header"):
        models.load_hf_checkpoint(path)
    weights.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(CheckpointError, match="header length"):
        models.load_hf_checkpoint(path)


def test_missing_extra_and_misshapen_tensors_are_named(llama_dir, tmp_path):
    path = _copy_checkpoint(llama_dir, tmp_path / "missing")
    _rewrite_tensors(path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing 1 tensor.*model.layers.1.mlp.up_proj"):
        models.load_hf_checkpoint(path)

    path = _copy_checkpoint(llama_dir, tmp_path / "extra")
    _rewrite_tensors(path, lambda t: t.update(
        {"model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)}))
    with pytest.raises(CheckpointError, match=r"not in a llama model.*q_proj.bias"):
        models.load_hf_checkpoint(path)

    path = _copy_checkpoint(llama_dir, tmp_path / "shape")
    _rewrite_tensors(path, lambda t: t.update(
        {"model.norm.weight": np.ones(63, np.float32)}))
    with pytest.raises(CheckpointError, match=r"'model.norm.weight' has shape \[63\], expected \[64\]"):
        models.load_hf_checkpoint(path)


def test_pytorch_bin_only_is_refused_with_hint(llama_dir, tmp_path):
    path = tmp_path / "bin"
    path.mkdir()
    (path / "config.json").write_text((llama_dir / "config.json").read_text())
    (path / "pytorch_model.bin").write_bytes(b"\0")
    with pytest.raises(CheckpointError, match=r"no safetensors weights.*pytorch_model.bin"):
        models.load_hf_checkpoint(path)


def test_mesh_errors_name_the_culprit():
    with pytest.raises(ValueError, match=r"does not divide the 8 available devices"):
        sharding.make_mesh((3, -1, 1))
    with pytest.raises(ValueError, match=r"needs 16 devices but 8 are available"):
        sharding.make_mesh({"data": 4, "fsdp": 2, "tensor": 2})
    with pytest.raises(ValueError, match="unknown mesh axes"):
        sharding.make_mesh({"model": 8})
    # tiny-qwen2 has 2 kv heads: tensor=4 cannot split them.
    cfg = models.get_config("tiny-qwen2")
    with pytest.raises(ValueError, match=r"layers/attn/k_(bias|kernel): dimension \d of shape .* has size 2"):
        models.init_params(cfg, jax.random.key(0), mesh=sharding.make_mesh((2, 1, 4)))


def test_mesh_fill_axis():
    mesh = sharding.make_mesh({"data": -1, "tensor": 2})
    assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "expert": 1, "tensor": 2}
    assert dict(sharding.make_mesh().shape) == {"data": 8, "fsdp": 1, "expert": 1, "tensor": 1}
    # A 3-sequence is (data, fsdp, tensor), as before the expert axis; 4 is MESH_AXES order.
    assert dict(sharding.make_mesh((2, 1, 4)).shape) == {"data": 2, "fsdp": 1, "expert": 1,
                                                         "tensor": 4}
    assert dict(sharding.make_mesh((1, 2, 2, 2)).shape) == {"data": 1, "fsdp": 2, "expert": 2,
                                                            "tensor": 2}


def test_unknown_preset_lists_available():
    with pytest.raises(KeyError, match="qwen2.5-1.5b"):
        models.get_config("qwen9-1t")
