"""HF checkpoints and tokenizers on a bucket (the `fakebucket://` store): loads equal
local loads, tensors are read by range (never the whole file, never to local disk),
exports publish whole objects under a commit marker, without a rename."""
import json
import os

import jax
import ml_dtypes
import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models as tok_models, pre_tokenizers, trainers

from distill_jax import fake_bucket, models, sharding, storage
from distill_jax.models import hf_io
from distill_jax.models.hf_io import staged_export
from distill_jax.models.safetensors_io import CheckpointError, SafetensorsFile
from distill_jax.tokenizer import load_tokenizer, train_sentencepiece
from tests.hf_reference import save_hf_model
from tests.models.test_hf_io_moe import QUANT_CONFIG, _is_quantized, _quantize, _write_checkpoint
from tests.tiny_models import arithmetic_tokenizer


@pytest.fixture
def bucket(bucket):
    """A prefix of the fake bucket (conftest); `upload` copies files into it as gsutil
    would: whole objects, no commit marker."""
    return f"{bucket}/run"


def upload(local_dir, url):
    storage.upload_tree(str(local_dir), url)       # as gsutil would: no commit marker
    return url


@pytest.fixture
def reads(monkeypatch):
    """Every ranged read of a bucket object, as (path, start, length); a download of a
    whole file or directory fails the test."""
    calls = []
    real = storage.read_range

    def counting(path, start, length):
        if not storage.is_local(path):
            calls.append((path, start, length))
        return real(path, start, length)

    def no_download(*args, **kwargs):
        raise AssertionError("a bucket checkpoint was copied to local disk")
    monkeypatch.setattr(storage, "read_range", counting)
    monkeypatch.setattr(storage, "local_file", no_download)
    monkeypatch.setattr(storage, "local_copy", no_download)
    return calls


def tensor_ranges(path):
    """{tensor name: (start, length)} of a local safetensors file's tensors."""
    st = SafetensorsFile(path)
    return {n: (st._data_start + st._entries[n][2], st._entries[n][0].itemsize
                * int(np.prod(st.shape(n)))) for n in st.names()}


def assert_trees_equal(a, b):
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb):
        x, y = np.asarray(jax.device_get(x)), np.asarray(jax.device_get(y))
        assert x.dtype == y.dtype, path
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    save_hf_model("llama", path)
    return path


def test_bucket_load_equals_local_and_reads_each_tensor_once_by_range(llama_dir, bucket, reads):
    url = upload(llama_dir, bucket)
    assert not storage.is_committed(url)        # a gsutil upload has no marker; loads anyway
    cfg, local = models.load_hf_checkpoint(llama_dir)
    cfg2, remote = models.load_hf_checkpoint(url)
    assert cfg2 == cfg
    assert_trees_equal(remote, local)

    weights = str(llama_dir / "model.safetensors")
    header_len = int.from_bytes(open(weights, "rb").read(8), "little")
    got = [(start, length) for path, start, length in reads if path.endswith(".safetensors")]
    # The header (two small reads), then each tensor exactly once, whole: the bytes read
    # are the file's, no more.
    assert got[:2] == [(0, 8), (8, header_len)]
    assert sorted(got[2:]) == sorted(tensor_ranges(weights).values())
    assert sum(length for _, length in got) == os.path.getsize(weights)


def test_mesh_load_reads_each_tensor_once_per_host(llama_dir, bucket, reads):
    url = upload(llama_dir, bucket)
    _, local = models.load_hf_checkpoint(llama_dir)
    # 4 replicas of a 2-way fsdp split: one host holds every slice, and reads each
    # tensor once, not once per device or per slice.
    mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
    _, remote = models.load_hf_checkpoint(url, mesh=mesh)
    down = remote["layers"]["mlp"]["down_kernel"]
    assert down.sharding.spec == jax.sharding.PartitionSpec(None, "tensor", "fsdp")
    assert_trees_equal(remote, local)
    weights = str(llama_dir / "model.safetensors")
    got = [(start, length) for path, start, length in reads if path.endswith(".safetensors")]
    assert len(got) == len(set(got)), "a tensor was read twice"
    assert sum(length for _, length in got) == os.path.getsize(weights)


def test_a_host_reads_only_the_rows_of_its_shards(llama_dir, bucket, reads):
    """One host of two, holding the devices of fsdp half 0: of HF down_proj [hidden,
    mlp], whose rows our [.., mlp, hidden] leaf splits over fsdp, it reads half the
    rows, in one ranged read."""
    url = upload(llama_dir, bucket)
    cfg = models.config_from_hf(hf_io.read_hf_config(url))
    mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
    shapes = models.param_shapes(cfg)
    shape = shapes["layers"]["mlp"]["down_kernel"].shape
    leaf_sharding = sharding.logical_to_shardings(models.param_logical_axes(cfg), mesh,
                                                  shapes=shapes)["layers"]["mlp"]["down_kernel"]
    fsdp = mesh.axis_names.index("fsdp")
    host = [index for device, index in leaf_sharding.devices_indices_map(shape).items()
            if np.argwhere(mesh.devices == device)[0][fsdp] == 0]
    m = next(m for m in hf_io._tensor_maps(cfg) if m.path == ("layers", "mlp", "down_kernel"))
    name = m.name(0)
    st = SafetensorsFile(storage.join(url, "model.safetensors"))
    hidden = st.shape(name)[0]
    runs = hf_io._row_runs(m, st.shape(name), [index[m.lead:] for index in host])
    assert runs == [(0, hidden // 2)]
    reads.clear()
    w = hf_io._read_rows(st, name, runs)
    start, length = tensor_ranges(str(llama_dir / "model.safetensors"))[name]
    assert [(s, n) for _, s, n in reads] == [(start, length // 2)]
    local = SafetensorsFile(str(llama_dir / "model.safetensors")).get(name)
    np.testing.assert_array_equal(w[:hidden // 2], local[:hidden // 2])


def test_sharded_multi_file_checkpoint_loads_from_bucket(llama_dir, tmp_path, bucket, reads):
    cfg, params = models.load_hf_checkpoint(llama_dir)
    written = models.save_hf_checkpoint(tmp_path / "export", cfg, params,
                                        max_shard_bytes=100_000)
    shards = [n for n in written if n.endswith(".safetensors")]
    assert len(shards) > 2
    url = upload(tmp_path / "export", bucket)
    cfg2, remote = models.load_hf_checkpoint(url)
    assert cfg2 == cfg
    assert_trees_equal(remote, params)
    for name in shards:
        got = [n for p, _, n in reads if p == storage.join(url, name)]
        assert sum(got) == os.path.getsize(tmp_path / "export" / name), name


def test_fp8_mesh_load_from_bucket_equals_local(tmp_path, bucket):
    """FP8 weights: a device's slice dequantises from just the rows it read."""
    cfg = models.config_from_hf({**models.to_hf_config(models.get_config("tiny-deepseek-v3")),
                                 "hidden_size": 192, "intermediate_size": 320})
    models.save_hf_checkpoint(tmp_path / "plain", cfg, models.init_params(cfg, jax.random.key(0)))
    st = SafetensorsFile(str(tmp_path / "plain" / "model.safetensors"))
    stored = {}
    for name in st.names():
        w = np.array(st.get(name), np.float32)
        if _is_quantized(name):
            stored[name], stored[name + "_scale_inv"] = _quantize(w)
        else:
            stored[name] = w
    assert stored["model.layers.0.mlp.gate_proj.weight"].dtype == ml_dtypes.float8_e4m3fn
    hf_config = {**models.to_hf_config(cfg), "quantization_config": QUANT_CONFIG}
    _write_checkpoint(tmp_path / "fp8", hf_config, stored)
    url = upload(tmp_path / "fp8", bucket)
    mesh = sharding.make_mesh({"fsdp": 2, "expert": 2, "tensor": 2})
    _, local = models.load_hf_checkpoint(tmp_path / "fp8", mesh=mesh)
    _, remote = models.load_hf_checkpoint(url, mesh=mesh)
    assert_trees_equal(remote, local)


def _tiny_model(vocab_size=256):
    cfg = models.get_config("tiny-qwen2", vocab_size=vocab_size)
    return cfg, models.init_params(cfg, jax.random.key(0))


def _files(path):
    return {rel: storage.read_bytes(storage.join(str(path), rel))
            for rel in storage.walk_files(str(path))}


def test_export_to_bucket_matches_local_export_byte_for_byte(tmp_path, bucket):
    cfg, params = _tiny_model()
    tok = load_tokenizer(arithmetic_tokenizer(tmp_path))
    moves = fake_bucket.FakeBucket.moves

    def export(path):
        with staged_export(path) as directory:
            written = models.save_hf_checkpoint(directory, cfg, params, max_shard_bytes=50_000)
            written += tok.save_pretrained(directory, chat_template="chatml")
            models.save_generation_config(directory, 2, [3, 4])
        return written
    written = export(str(tmp_path / "local"))
    assert export(bucket) == written
    local, remote = _files(tmp_path / "local"), _files(bucket)
    marker = json.loads(remote.pop(storage.COMMIT_MARKER))
    assert remote == local
    assert marker["files"] == {rel: len(data) for rel, data in local.items()}
    assert fake_bucket.FakeBucket.moves == moves
    cfg_local, params_local = models.load_hf_checkpoint(tmp_path / "local")
    cfg_remote, params_remote = models.load_hf_checkpoint(bucket)
    assert cfg_remote == cfg_local
    assert_trees_equal(params_remote, params_local)


def test_reexport_to_bucket_replaces_the_weights_and_recommits(tmp_path, bucket):
    cfg, params = _tiny_model()
    sharded = models.save_hf_checkpoint(bucket, cfg, params, max_shard_bytes=50_000)
    assert storage.is_committed(bucket) and "model.safetensors.index.json" in sharded
    single = models.save_hf_checkpoint(bucket, cfg, params)
    assert sorted(storage.listdir(bucket)) == sorted(single + [storage.COMMIT_MARKER])
    assert set(json.loads(storage.read_text(storage.join(bucket, storage.COMMIT_MARKER)))
               ["files"]) == set(single)
    assert_trees_equal(models.load_hf_checkpoint(bucket)[1], params)


def test_a_reexport_killed_halfway_is_refused_by_the_loader(tmp_path, bucket, monkeypatch):
    cfg, params = _tiny_model()
    models.save_hf_checkpoint(bucket, cfg, params, max_shard_bytes=50_000)
    uploaded = []
    real_upload = storage.upload_file

    def killed_after_one_file(local, url):
        if uploaded:
            raise RuntimeError("killed mid-upload")
        uploaded.append(url)
        real_upload(local, url)
    with monkeypatch.context() as m:
        m.setattr(storage, "upload_file", killed_after_one_file)
        with pytest.raises(RuntimeError, match="killed mid-upload"):
            models.save_hf_checkpoint(bucket, cfg, jax.tree_util.tree_map(lambda x: x + 1, params),
                                      max_shard_bytes=50_000)
    # One shard is new and the others old, with the same shapes: loading it must fail.
    with pytest.raises(CheckpointError, match="_PUBLISHING is present"):
        models.load_hf_checkpoint(bucket)
    models.save_hf_checkpoint(bucket, cfg, params, max_shard_bytes=50_000)
    assert_trees_equal(models.load_hf_checkpoint(bucket)[1], params)


def test_failed_export_uploads_nothing(tmp_path, bucket):
    cfg, params = _tiny_model()
    with pytest.raises(RuntimeError, match="killed"):
        with staged_export(bucket) as directory:
            models.save_hf_checkpoint(directory, cfg, params)
            raise RuntimeError("killed")
    assert not storage.exists(bucket)


def test_bucket_errors_name_the_path(llama_dir, bucket):
    with pytest.raises(CheckpointError, match=r"gs://b/ckpt.*gcsfs"):
        models.load_hf_checkpoint("gs://b/ckpt")
    with pytest.raises(CheckpointError, match=r"fakebucket://test-bucket/nope does not exist"):
        models.load_hf_checkpoint("fakebucket://test-bucket/nope")
    url = bucket + "/weightless"
    storage.write_bytes_atomic(storage.join(url, "config.json"),
                               (llama_dir / "config.json").read_bytes())
    with pytest.raises(CheckpointError, match=rf"no safetensors weights in {url}"):
        models.load_hf_checkpoint(url)
    url = bucket + "/sharded"
    cfg, params = _tiny_model()
    written = models.save_hf_checkpoint(url, cfg, params, max_shard_bytes=50_000)
    storage.remove(storage.join(url, written[1]))
    with pytest.raises(CheckpointError, match=rf"maps tensor .* to {written[1]}, which does not"):
        models.load_hf_checkpoint(url)
    with pytest.raises(ValueError, match=r"tokenizer path: .*gs://b/tok.*gcsfs"):
        load_tokenizer("gs://b/tok")


def test_sentencepiece_tokenizer_round_trip_through_bucket(tmp_path, bucket):
    local = load_tokenizer(arithmetic_tokenizer(tmp_path))
    local.save_pretrained(bucket, chat_template="deepseek-r1")
    remote = load_tokenizer(bucket)
    text = "12 * 7 = 84 <think>so</think> <|im_end|>"
    assert remote.encode(text) == local.encode(text)
    assert remote.special_ids() == local.special_ids()
    assert remote.chat_template_source == local._template_source("deepseek-r1")
    assert load_tokenizer(storage.join(bucket, "tokenizer.model")).encode(text) == \
        local.encode(text)
    model = train_sentencepiece(["1 + 1 = 2", "2 * 3 = 6"] * 50, bucket + "/spm/tok",
                                vocab_size=275)
    assert model == bucket + "/spm/tok.model"
    assert storage.listdir(bucket + "/spm") == ["tok.model", "tok.vocab"]
    assert load_tokenizer(model).decode(load_tokenizer(model).encode("2 * 3")) == "2 * 3"


def test_hf_tokenizer_round_trip_through_bucket(tmp_path, bucket):
    tok = tokenizers.Tokenizer(tok_models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["What is 12 * 7? It is 84."] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}))
    local = load_tokenizer(tmp_path, chat_template="chatml")
    local.save_pretrained(bucket)
    assert set(storage.listdir(bucket)) == {"tokenizer.json", "tokenizer_config.json",
                                            "special_tokens_map.json"}
    for remote in (load_tokenizer(bucket), load_tokenizer(storage.join(bucket, "tokenizer.json"))):
        messages = [{"role": "user", "content": "What is 12 * 7?"}]
        assert remote.apply_chat_template(messages, tokenize=True) == \
            local.apply_chat_template(messages, tokenize=True)
        assert (remote.eos_id, remote.pad_id) == (local.eos_id, local.pad_id)
