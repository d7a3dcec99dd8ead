"""One way from an experiment config's model section to `(ModelConfig, params)`.

Every stage that builds a model from a config (training's student and online
teacher, generation's teacher, evaluation, the memory planner, the demos) goes
through `model_from_section`, so a field that can be set for one can be set for
all. A section holds:

  checkpoint    an HF directory (config.json + safetensors): its architecture is fixed
  preset        or a preset name, randomly initialised from `init_seed`
  overrides     architecture fields to change (a preset's freely; a checkpoint's only
                where they equal the checkpoint's, except the context limit and
                moe.dispatch); the nested ones (moe, mla, rope_scaling) as a dict of
                their own fields, merged into the preset's or checkpoint's value,
                e.g. overrides.moe = {"dispatch": "dense"}
  init_seed
  dtype, param_dtype, remat_policy, scan_unroll, attention_impl
                the `ModelConfig` fields no checkpoint fixes (`RUNTIME_FIELDS`): how
                the model runs, not what it is

`model_section(**defaults)` makes such a section with every runtime field
present (so any of them can be set from the command line of a locked config),
at `ModelConfig`'s defaults unless the stage declares its own.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections

from distill_jax.models import attention
from distill_jax.models.config import (MlaConfig, ModelConfig, MoeConfig, RopeScaling,
                                       config_from_hf, get_config)

RUNTIME_FIELDS = ("dtype", "param_dtype", "remat_policy", "scan_unroll", "attention_impl")
# Fields a checkpoint's config.json sets that a run may still change: the context
# limit bounds positions, it is not a property of the weights (R1's students were
# trained at 32k from a base whose config.json says 4096).
CHECKPOINT_ADJUSTABLE = ("max_position_embeddings",)
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
# ModelConfig fields that are dataclasses themselves: overridden field by field.
_NESTED = {"moe": MoeConfig, "mla": MlaConfig, "rope_scaling": RopeScaling}
# Nested fields that say how a model runs, not what it is: a checkpoint's may change.
_NESTED_RUNTIME = {"moe": ("dispatch",)}


def model_section(**defaults: Any) -> ml_collections.ConfigDict:
    """A model section with every settable key; `defaults` are the stage's own."""
    unknown = sorted(set(defaults) - set(RUNTIME_FIELDS) - {"checkpoint", "preset", "init_seed"})
    if unknown:
        raise ValueError(f"model_section: unknown keys {unknown}")
    c = ml_collections.ConfigDict()
    c.checkpoint = ""
    c.preset = ""
    c.overrides = ml_collections.ConfigDict()
    c.init_seed = 0
    for name in RUNTIME_FIELDS:
        c[name] = _DEFAULTS[name]
    for name, value in defaults.items():
        c[name] = value
    return c


def _runtime(section) -> dict[str, Any]:
    out = {}
    for name in RUNTIME_FIELDS:
        value = section.get(name)
        if value is not None and value != "":
            out[name] = value
    return out


def _merge_nested(base: ModelConfig, overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides with each nested field given as a mapping replaced by the base's
    value with those fields changed (or built from them where the base has none)."""
    out = dict(overrides)
    for name, kind in _NESTED.items():
        value = out.get(name)
        if value is None or isinstance(value, kind):
            continue
        if not hasattr(value, "keys"):
            raise ValueError(f"model overrides.{name} must be a dict of {kind.__name__} "
                             f"fields, got {value!r}")
        fields = {key: value[key] for key in value.keys()}
        known = {f.name for f in dataclasses.fields(kind)}
        if set(fields) - known:
            raise ValueError(f"model overrides.{name} has unknown fields "
                             f"{sorted(set(fields) - known)} (fields: {sorted(known)})")
        current = getattr(base, name)
        out[name] = (dataclasses.replace(current, **fields) if current is not None
                     else kind(**fields))
    return out


def _same_architecture(name: str, value, base_value) -> bool:
    """Whether an override leaves the checkpoint's architecture as it is: equal but
    for the field's runtime parts (see _NESTED_RUNTIME)."""
    runtime = _NESTED_RUNTIME.get(name, ())
    if runtime and value is not None and base_value is not None:
        value = dataclasses.replace(value, **{f: getattr(base_value, f) for f in runtime})
    return value == base_value


def config_from_section(section, vocab_size: int | None = None) -> ModelConfig:
    """The ModelConfig a section names. `vocab_size` (the tokenizer's) sizes a
    preset's embedding; a checkpoint keeps its own."""
    overrides = dict(section.get("overrides") or {})
    runtime = _runtime(section)
    clash = sorted(set(overrides) & set(runtime))
    if clash:
        raise ValueError(f"model field(s) {clash} set both as section keys and in overrides; "
                         "set them once, as section keys")
    unknown = sorted(set(overrides) - set(_DEFAULTS))
    if unknown:
        raise ValueError(f"model overrides {unknown} are not ModelConfig fields "
                         f"(fields: {sorted(_DEFAULTS)})")
    if section.get("checkpoint"):
        from distill_jax.models.hf_io import read_hf_config
        base = config_from_hf(read_hf_config(section.checkpoint))
        overrides = _merge_nested(base, overrides)
        for name, value in overrides.items():
            if name in CHECKPOINT_ADJUSTABLE or name in RUNTIME_FIELDS:
                continue
            if not _same_architecture(name, value, getattr(base, name)):
                raise ValueError(
                    f"model overrides.{name}={value!r}, but checkpoint {section.checkpoint} has "
                    f"{name}={getattr(base, name)!r}: a checkpoint fixes its architecture "
                    f"(only {', '.join(RUNTIME_FIELDS + CHECKPOINT_ADJUSTABLE)} can change)")
        return base.replace(**overrides, **runtime)
    if section.get("preset"):
        if vocab_size and "vocab_size" not in overrides:
            overrides["vocab_size"] = vocab_size
        overrides = _merge_nested(get_config(section.preset), overrides)
        return get_config(section.preset, **overrides, **runtime)
    raise ValueError("the model config needs `checkpoint` (an HF directory) or `preset`")


def model_from_section(section, vocab_size: int | None = None,
                       mesh: jax.sharding.Mesh | None = None) -> tuple[ModelConfig, Any]:
    """`(ModelConfig, params)`: a checkpoint's weights, or a preset's random init
    from the section's `init_seed`; placed on `mesh` when given."""
    from distill_jax.models.hf_io import load_hf_checkpoint
    from distill_jax.models.transformer import init_params
    cfg = config_from_section(section, vocab_size)
    # Before any weights: an attention kernel this backend cannot run is an error now,
    # not at the first compile after a large checkpoint has loaded.
    attention.resolve(cfg.attention_impl, None)
    if section.get("checkpoint"):
        # The weights depend on the architecture and param_dtype only; the other runtime
        # fields and the context limit are the section's (already in `cfg`).
        _, params = load_hf_checkpoint(section.checkpoint, dtype=cfg.param_dtype, mesh=mesh)
        return cfg, params
    return cfg, init_params(cfg, jax.random.key(section.get("init_seed") or 0), mesh=mesh)
