"""Config plumbing: every model field no checkpoint fixes is settable in every stage's
model section (one builder for all), and every default is declared once."""
import jax
import ml_collections
import pytest

from configs import sft_tiny_cpu
from distill_jax import models
from distill_jax.evaluation.config import default_config as evaluate_defaults
from distill_jax.filters.config import default_config as filter_defaults
from distill_jax.filters.rejection import filter_traces
from distill_jax.sampling.config import default_config as generate_defaults
from distill_jax.training.config import base_config as train_defaults
from distill_jax.training.run import train
from tests.overrides import apply_overrides

MODEL_SECTIONS = [(train_defaults, "model"), (train_defaults, "kd.teacher"),
                  (generate_defaults, "teacher"), (evaluate_defaults, "model")]


def _section(config, path):
    for part in path.split("."):
        config = config[part]
    return config


@pytest.mark.parametrize("defaults,path", MODEL_SECTIONS)
def test_every_runtime_field_is_settable_from_a_locked_config(defaults, path):
    config = defaults()
    config.lock()                       # as --config.x=y sees it: unknown keys are refused
    apply_overrides(config, {f"{path}.preset": "tiny-llama", f"{path}.checkpoint": "",
                             f"{path}.attention_impl": "blockwise", f"{path}.scan_unroll": 2,
                             f"{path}.remat_policy": "full", f"{path}.dtype": "float32"})
    cfg = models.config_from_section(_section(config, path), vocab_size=300)
    assert (cfg.attention_impl, cfg.scan_unroll, cfg.remat_policy, cfg.dtype, cfg.vocab_size) \
        == ("blockwise", 2, "full", "float32", 300)
    assert set(models.RUNTIME_FIELDS) <= set(_section(config, path).keys())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    cfg = models.get_config("tiny-qwen2")
    models.save_hf_checkpoint(path, cfg, models.init_params(cfg, jax.random.key(0)))
    return str(path)


def test_a_checkpoint_model_takes_the_sections_runtime_fields(checkpoint):
    section = models.model_section(checkpoint=checkpoint, attention_impl="blockwise",
                                   remat_policy="dots", param_dtype="bfloat16")
    section.overrides.max_position_embeddings = 2048      # a context limit, not the weights
    section.overrides.hidden_size = 64                     # equal to the checkpoint's: fine
    cfg, params = models.model_from_section(section, vocab_size=999)
    assert (cfg.attention_impl, cfg.remat_policy, cfg.max_position_embeddings) == \
        ("blockwise", "dots", 2048)
    assert cfg.vocab_size == 256                           # a checkpoint keeps its own
    assert params["embedding"].dtype == "bfloat16"


def test_a_field_the_checkpoint_fixes_set_differently_is_refused(checkpoint):
    section = models.model_section(checkpoint=checkpoint)
    section.overrides.num_layers = 4
    with pytest.raises(ValueError, match=r"overrides.num_layers=4, but checkpoint .* has "
                                         r"num_layers=2"):
        models.config_from_section(section)


def test_overrides_that_are_not_model_fields_are_refused():
    section = models.model_section(preset="tiny-llama")
    section.overrides.hidden = 32
    with pytest.raises(ValueError, match=r"\['hidden'\] are not ModelConfig fields"):
        models.config_from_section(section)


def _without(config, dotted):
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
        node = node[p]
    del node[leaf]
    return config


@pytest.mark.parametrize("key", ["train.export_dtype", "train.check_memory", "kd.topk",
                                 "model.attention_impl", "data.host_split"])
def test_a_training_config_missing_a_declared_key_is_refused_by_name(tmp_path, key):
    config = sft_tiny_cpu.get_config()
    config.workdir = str(tmp_path)
    with pytest.raises(KeyError, match=key.replace(".", r"\.")):
        train(_without(config, key))


@pytest.mark.parametrize("key", ["pass_at_k", "dedup.shingle_size", "filters.correctness.math_timeout_s"])
def test_a_filter_config_missing_a_declared_key_is_refused_by_name(tmp_path, key):
    config = filter_defaults()
    config.input.path, config.output_dir = str(tmp_path), str(tmp_path / "out")
    with pytest.raises(KeyError, match=key.replace(".", r"\.")):
        filter_traces(_without(config, key))


def test_free_form_sections_and_switched_off_sections_are_not_missing_keys():
    from distill_jax.config_keys import require_keys
    config = train_defaults()
    config.model.overrides = ml_collections.ConfigDict({"hidden_size": 8})
    config.mesh = None
    require_keys(config, train_defaults(), "distill-train")
