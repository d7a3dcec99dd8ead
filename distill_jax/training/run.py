"""The `distill-train` stage: curated traces -> trained student (+ HF export).

Resumes by itself: if the work directory holds a checkpoint, training continues
from it — params, optimizer state, step and the data iterator's position — and
the loss curve continues exactly as an uninterrupted run's would (bitwise on
CPU). A non-finite loss stops the run with the step named; the state that
produced it is not saved, so the last checkpoint stays the last good one.

Several hosts: every host runs this same function. Each feeds its rows of the
global batch (see `data.host_split`), all of them save and restore the orbax
checkpoint together (the checkpoint directory must be one shared path: NFS or
a bucket orbax can write), and process 0 alone writes metrics, the summary and
the HF export.

Buckets: the work directory, the data, the caches, the checkpoints and the export
may each be a `storage` URL (`gs://...`); every file goes through `storage` (whole
objects, no rename, no append; see training/metrics.py for the log, checkpoint.py
for which schemes orbax writes itself, data/sources.py for how data is read). An
unknown scheme fails before anything is read. The export's three writers (weights,
tokenizer, generation config) write inside one `hf_io.staged_export`, so on a bucket
one commit marker covers all of their files.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
from absl import logging

from distill_jax import distributed, models, planning, sharding, storage
from distill_jax.chat import ChatFormat, missing_chat_markers
from distill_jax.models import attention
from distill_jax.models.hf_io import staged_export
from distill_jax.config_keys import require_keys
from distill_jax.data.sft import MixtureSource, SFTPipeline, describe, describe_sources
from distill_jax.data.sources import SourceConfig, open_source, parse_sources, source_name
from distill_jax.fileio import write_json_atomic
from distill_jax.progress import Progress
from distill_jax.tokenizer import Tokenizer, load_tokenizer
from distill_jax.training.checkpoint import Checkpointer, check_directory
from distill_jax.training.config import base_config
from distill_jax.training import on_policy
from distill_jax.training.kd_vocab import shared_kd_vocabulary
from distill_jax.training.metrics import MetricsWriter
from distill_jax.training.optimizer import make_optimizer
from distill_jax.training.trainer import (KDSettings, Trainer, TrainState, model_flops_per_token,
                                          peak_tflops_per_device)

# A hook is called after every optimizer step with (step, checkpointer): tests use
# one to kill the process from outside the loop; users to add their own evaluation.
StepHook = Callable[[int, Checkpointer], None]
VOCAB_PAD_MULTIPLE = 128


@dataclasses.dataclass
class TrainingRun:
    """Everything `prepare` checks and builds before a single parameter is loaded."""
    config: Any
    workdir: str
    tokenizer: Tokenizer
    chat_format: ChatFormat
    added_tokens: list[str]             # chat markers this run added to the tokenizer
    added_ids: range                    # the ids appended for them (none if ids were reused)
    cfg: models.ModelConfig
    kd: KDSettings
    teacher_cfg: models.ModelConfig | None
    mesh: jax.sharding.Mesh | None
    pipeline: SFTPipeline | None        # None: an on-policy run without off-policy steps
    total_steps: int
    trainer: Trainer
    checkpointer: Checkpointer
    meta: dict[str, Any]
    prompt_set: on_policy.PromptSet | None = None     # kd.mode="on_policy"
    eval_set: on_policy.PromptSet | None = None

    @property
    def primary(self) -> bool:
        return distributed.is_primary()

    def say(self, message: str) -> None:
        if self.primary:
            print(message)


def train(config, hooks: Sequence[StepHook] = ()) -> dict[str, Any]:
    """Runs (or resumes) training; returns the summary written to workdir/summary.json."""
    run = prepare(config)
    state, batches, start = resume_or_init(run)
    teacher_params = load_teacher(run)
    state, steps, last_loss, evaluation = fit(run, state, batches, start, teacher_params, hooks)
    pipeline = run.pipeline
    summary = {"steps": steps, "total_steps": run.total_steps, "final_loss": last_loss,
               "data": dataclasses.asdict(pipeline.stats) if pipeline else None,
               "model": run.cfg.name,
               "data_sources": [dataclasses.asdict(s) for s in pipeline.source_stats]
               if pipeline else [],
               "params": models.count_params(run.cfg), "kd": dataclasses.asdict(run.kd),
               "added_tokens": run.added_tokens, "kd_vocab_size": run.trainer.kd_vocab_size}
    if run.prompt_set is not None:
        summary["on_policy"] = {"prompts": len(run.prompt_set),
                                "prompts_per_step": batches.prompts_per_step,
                                "samples_per_prompt": config.on_policy.n,
                                "held_out": evaluation}
    if config.train.export_dir:
        summary["export"] = export(run, state)
    if run.primary:
        write_json_atomic(storage.join(run.workdir, "summary.json"), summary)
    run.say(f"train: {steps}/{run.total_steps} steps, final loss {last_loss}")
    return summary


# ---------------------------------------------------------------- prepare


def prepare(config) -> TrainingRun:
    """Reads and checks everything cheap first: tokenizer, chat format, model and
    teacher configs, vocabularies, memory plan, data. Loads no parameters."""
    require_keys(config, base_config(), "distill-train")
    dc, tc, kc = config.data, config.train, config.kd
    workdir = _check_paths(config)
    # The mixture's entries are checked (weights, names, lengths, paths) before anything.
    sources = parse_sources(list(dc.sources), dc.seq_len) if dc.sources else []
    storage.makedirs(workdir)
    if not dc.tokenizer_path:
        raise ValueError("config.data.tokenizer_path is empty: set it to the student's "
                         "tokenizer (.model file or a directory with tokenizer.json)")
    tokenizer, added, added_ids = _student_tokenizer(dc, sources)
    chat_format = ChatFormat.create(tokenizer, dc.chat_template or None,
                                    dc.system_prompt or None)
    cfg = _student_config(config.model, tokenizer, added)
    kd = KDSettings(kc.mode, kc.alpha, kc.temperature, kc.kind, kc.beta)
    teacher_cfg, kd_vocab_size = None, None
    if kd.mode in ("online", "on_policy"):
        teacher_tokenizer = _teacher_tokenizer(kc.teacher, dc.tokenizer_path)
        teacher_cfg = models.config_from_section(kc.teacher, teacher_tokenizer.vocab_size)
        kd_vocab_size = shared_kd_vocabulary(tokenizer, teacher_tokenizer, cfg, teacher_cfg)
        if kd.mode == "on_policy":
            on_policy.check_teacher_scores_every_token(tokenizer, teacher_tokenizer)
    if kd.mode == "offline" and kc.topk < 1:
        raise ValueError("kd.mode='offline' needs kd.topk >= 1 (the stored top-k width to use)")
    prompt_set = eval_set = None
    if kd.mode == "on_policy":
        prompt_set, eval_set = on_policy.prompt_sets(config, tokenizer)
    _check_context(dc.seq_len, cfg, teacher_cfg)
    mesh = sharding.make_mesh(dict(config.mesh)) if config.get("mesh") else None
    if prompt_set is not None:
        on_policy.check_slots(config, mesh)
    _check_memory(config)

    cache_dir = dc.cache_dir or storage.join(workdir, "data_cache")
    pipeline = None
    if kd.mode != "on_policy" or config.on_policy.off_policy_fraction > 0:
        pipeline = _sft_pipeline(config, sources, tokenizer, chat_format, cache_dir,
                                 cycle=bool(tc.num_steps) or prompt_set is not None)
    if prompt_set is not None:
        # num_epochs counts passes over the prompts; off-policy steps come on top.
        total_steps = tc.num_steps or on_policy.total_steps(
            tc.num_epochs * (len(prompt_set) // (tc.batch_size // config.on_policy.n)),
            config.on_policy.off_policy_fraction)
        if total_steps < 1:
            raise ValueError(f"{prompt_set.path}: {len(prompt_set)} prompts make no step of "
                             f"{tc.batch_size // config.on_policy.n} prompts; set "
                             "train.num_steps or lower train.batch_size")
    else:
        # With host_split="examples" hosts may count different batch totals: the shortest
        # wins. (From the length cache: no tokenising.)
        total_steps = tc.num_steps or min(distributed.gather_json(pipeline.count_batches()))
        if total_steps < 1:
            raise ValueError(f"{_data_name(config)}: {pipeline.stats.kept} usable examples make "
                             f"no full batch of {tc.batch_size} rows; lower train.batch_size or "
                             "add data")
    tx, schedule = make_optimizer(tc, total_steps)
    trainer = Trainer(cfg, tx, schedule, mesh=mesh, microbatches=tc.microbatches, kd=kd,
                      teacher_cfg=teacher_cfg, kd_vocab_size=kd_vocab_size,
                      loss_chunk_size=tc.loss_chunk_size)
    checkpointer = Checkpointer(_checkpoint_dir(config, workdir), tc.checkpoint_every,
                                tc.keep_checkpoints, tc.async_checkpointing)
    meta = {"model": models.to_hf_config(cfg), "total_steps": total_steps}
    return TrainingRun(config, workdir, tokenizer, chat_format, added, added_ids, cfg, kd,
                       teacher_cfg, mesh, pipeline, total_steps, trainer, checkpointer, meta,
                       prompt_set, eval_set)


def _check_paths(config) -> str:
    """Fails for a path whose URL scheme has no backend (or a checkpoint directory this
    run cannot use) before anything is read; returns the work directory (absolute
    when local)."""
    dc, tc, kc, oc = config.data, config.train, config.kd, config.on_policy
    paths = {"workdir": config.workdir, "data.path": "" if dc.sources else dc.path,
             "data.tokenizer_path": dc.tokenizer_path, "data.cache_dir": dc.cache_dir,
             "train.export_dir": tc.export_dir, "model.checkpoint": config.model.checkpoint,
             "kd.teacher.checkpoint": kc.teacher.checkpoint,
             "kd.teacher.tokenizer_path": kc.teacher.tokenizer_path,
             "on_policy.prompts.path": oc.prompts.path,
             "on_policy.eval_prompts.path": oc.eval_prompts.path}
    for what, path in paths.items():
        storage.check_path(str(path or ""), f"config.{what}")
    workdir = storage.absolute(str(config.workdir))
    check_directory(_checkpoint_dir(config, workdir))
    return workdir


def _checkpoint_dir(config, workdir: str) -> str:
    return config.train.checkpoint_dir or storage.join(workdir, "checkpoints")


def _data_name(config) -> str:
    dc = config.data
    return dc.path if not dc.sources else f"mixture of {len(dc.sources)} sources"


def _sft_pipeline(config, sources, tokenizer: Tokenizer, chat_format: ChatFormat,
                  cache_dir: str, cycle: bool) -> SFTPipeline:
    """The curated traces as packed batches (the lengths cached in `cache_dir`);
    `cycle`: as many passes as the steps take (a fixed step count, or the off-policy
    batches of an on-policy run), else train.num_epochs."""
    dc, tc, kc = config.data, config.train, config.kd
    pipeline = SFTPipeline(
        _mixture(dc, sources, tokenizer, chat_format, cache_dir), tokenizer,
        seq_len=dc.seq_len, batch_size=tc.batch_size,
        num_epochs=None if cycle else tc.num_epochs, seed=config.seed,
        packing=dc.packing, overlong=dc.overlong, chat_format=chat_format,
        topk=kc.topk if kc.mode == "offline" else 0, num_packing_bins=dc.num_packing_bins,
        process_index=jax.process_index(), process_count=jax.process_count(),
        host_split=dc.host_split, cache_dir=cache_dir, progress=distributed.is_primary(),
        read_threads=dc.read_threads)
    if distributed.is_primary():
        print(f"train: data {_data_name(config)}: "
              f"{describe(pipeline.stats, dc.seq_len, dc.overlong)}")
        if sources:
            for line in describe_sources(pipeline):
                print(f"train:   {line}")
    return pipeline


def _check_context(seq_len: int, *configs) -> None:
    """Before any weights: each model's attention kernel runs on this backend (an
    explicit splash off TPU or cudnn off GPU is refused, naming what `auto` would
    pick), and rows longer than a model's max_position_embeddings are warned about."""
    for cfg in configs:
        if cfg is None:
            continue
        kernel = attention.resolve(cfg.attention_impl, seq_len)
        logging.info("train: %s attention at %d tokens: %s (attention_impl=%s)",
                     cfg.name or cfg.model_type, seq_len, kernel, cfg.attention_impl)
        warning = cfg.context_warning(seq_len)
        if warning:
            logging.warning("train: %s", warning)
            if distributed.is_primary():
                print(f"train: warning: {warning}")


def _mixture(dc, sources: list[SourceConfig], tokenizer: Tokenizer, chat_format: ChatFormat,
             cache_dir: str) -> list[MixtureSource]:
    """The pipeline's sources: data.path alone (weight 1), or data.sources, each opened
    (a JSONL through its cached line index) and with its own chat format when it sets
    a template or system prompt."""
    host = jax.process_index()
    if not sources:
        return [MixtureSource(open_source(dc.path, cache_dir, host), name=source_name(dc.path),
                              path=dc.path)]
    out = []
    for s in sources:
        fmt = chat_format
        if s.chat_template or s.system_prompt:
            fmt = ChatFormat.create(tokenizer, s.chat_template or dc.chat_template or None,
                                    s.system_prompt or dc.system_prompt or None)
        out.append(MixtureSource(open_source(s.path, cache_dir, host), name=s.name,
                                 weight=s.weight, chat_format=fmt, seq_len=s.seq_len,
                                 path=s.path))
    return out


def _student_tokenizer(dc, sources: Sequence[SourceConfig] = ()
                       ) -> tuple[Tokenizer, list[str], range]:
    """The student's tokenizer, extended by the templates' missing chat markers (the
    data-level template's and every source's) when `data.add_chat_tokens` asks for
    it (otherwise ChatFormat refuses them); the markers; and the ids appended for
    them. A backend may give a marker the id of an existing vocabulary entry
    instead, so the new ids are those past the base vocabulary, not one per marker."""
    tokenizer = load_tokenizer(dc.tokenizer_path)
    missing = []
    if dc.add_chat_tokens:
        formats = [(dc.chat_template, dc.system_prompt)] + [
            (s.chat_template or dc.chat_template, s.system_prompt or dc.system_prompt)
            for s in sources]
        for template, system in formats:
            missing += [m for m in missing_chat_markers(tokenizer, template or None,
                                                        system or None) if m not in missing]
    if not missing:
        return tokenizer, [], range(0)
    logging.info("train: adding chat markers %s to tokenizer %s", missing, tokenizer.name)
    extended = tokenizer.with_special_tokens(missing)
    return extended, missing, range(tokenizer.vocab_size, extended.vocab_size)


def _student_config(section, tokenizer: Tokenizer, added: list[str]) -> models.ModelConfig:
    """The student's config, with an embedding row for every tokenizer id. Grown for
    added tokens, the vocabulary is padded to a multiple of VOCAB_PAD_MULTIPLE, as
    Qwen's and Llama's are, so it still divides over the mesh axes it is sharded on."""
    cfg = models.config_from_section(section, tokenizer.vocab_size)
    if tokenizer.vocab_size > cfg.vocab_size:
        if not added:
            raise ValueError(
                f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} ids but the model "
                f"{section.checkpoint or section.preset} embeds {cfg.vocab_size}: they do not "
                "belong together")
        cfg = cfg.replace(vocab_size=-(-tokenizer.vocab_size // VOCAB_PAD_MULTIPLE)
                          * VOCAB_PAD_MULTIPLE)
    return cfg


def _teacher_tokenizer(section, student_tokenizer_path: str) -> Tokenizer:
    """kd.teacher.tokenizer_path, else the teacher checkpoint's own tokenizer, else
    (a preset teacher) the student's."""
    if section.tokenizer_path:
        return load_tokenizer(section.tokenizer_path)
    if section.checkpoint and any(storage.exists(storage.join(section.checkpoint, name))
                                  for name in ("tokenizer.json", "tokenizer.model")):
        return load_tokenizer(section.checkpoint)
    return load_tokenizer(student_tokenizer_path)


# ---------------------------------------------------------------- resume


def resume_or_init(run: TrainingRun) -> tuple[TrainState, Any, int]:
    """(state, batches, step): from the latest checkpoint, or fresh. `batches` is
    where the steps' batches come from (`SFTBatches`, or on-policy samples), at the
    position that goes with the state."""
    ckpt = run.checkpointer
    start = ckpt.latest_step()
    if start is not None:
        state, data_states = ckpt.restore(start, run.trainer.abstract_state(), run.meta)
    else:
        state = run.trainer.init_state(load_student(run))
    data_iter = run.pipeline.iterator() if run.pipeline is not None else None
    if run.prompt_set is None:
        batches = SFTBatches(data_iter)
    else:
        batches = on_policy.OnPolicyBatches(
            run.config, run.cfg, run.tokenizer, run.prompt_set, run.kd, state.params,
            mesh=run.mesh, off_policy_iter=data_iter, eval_set=run.eval_set)
    if start is None:
        return state, batches, 0
    batches.set_state(_this_host_data_state(data_states, run.config.data.host_split,
                                            ckpt.directory, start))
    run.say(f"train: resumed from step {start} in {ckpt.directory}")
    return state, batches, start


class SFTBatches:
    """The batches of the curated traces, in the data iterator's order; its state is
    the iterator's (what a checkpoint stores)."""

    samples_from_state = False    # the next batch can be prepared while a step runs

    def __init__(self, data_iter):
        self.data_iter = data_iter

    def get_state(self) -> dict:
        return self.data_iter.get_state()

    def set_state(self, state: dict) -> None:
        self.data_iter.set_state(state)

    def source_tokens(self, data_state: dict):
        """Cumulative target tokens per source, from a position of this iterator."""
        return data_state.get("target_tokens")

    def next(self, step: int, state) -> tuple[dict, None, dict]:
        """(batch, KDSettings None = the Trainer's, host metrics)."""
        return next(self.data_iter), None, {}


def load_student(run: TrainingRun):
    """The student's starting params (checkpoint or random init). Rows of the chat
    markers this run added to a checkpoint's vocabulary start at the mean of the
    existing token rows (an average token: the initial distribution barely moves)."""
    section = run.config.model
    if not (run.added_ids and section.checkpoint):
        return models.model_from_section(section, run.tokenizer.vocab_size, run.mesh)[1]
    source_cfg, params = models.model_from_section(section, mesh=run.mesh)
    cfg, params = models.add_token_rows(source_cfg, params, run.added_ids, run.cfg.vocab_size)
    assert cfg == run.cfg, (cfg, run.cfg)
    return params


def load_teacher(run: TrainingRun):
    if run.teacher_cfg is None:
        return None
    return models.model_from_section(run.config.kd.teacher, run.teacher_cfg.vocab_size,
                                     run.mesh)[1]


# ---------------------------------------------------------------- the loop


def fit(run: TrainingRun, state: TrainState, batches, start: int, teacher_params,
        hooks: Sequence[StepHook] = ()) -> tuple[TrainState, int, float | None, dict]:
    """Steps from `start` to the end: step, log, checkpoint. Returns the final state,
    its step, the last loss and the last held-out metrics (on-policy runs with
    eval_prompts; else empty)."""
    ckpt = run.checkpointer
    logger = _StepLogger(run, start)
    progress = Progress(run.total_steps - start, "steps", "train", skip_first=True,
                        enabled=run.primary)
    step, last_loss, evaluation = start, None, {}
    evaluate = _held_out_evaluation(run, batches, teacher_params)
    if evaluate and start == 0:
        evaluation = evaluate(0, state)
        logger.write(0, evaluation)
    data_state = batches.get_state()      # the data position that goes with `state`
    item = _next_batch(batches, step, state, run.total_steps)
    try:
        while item is not None:
            batch, kd, host_metrics = item
            started = time.perf_counter()
            state, metrics = run.trainer.step(state, batch, teacher_params, kd)
            step += 1
            data_state = batches.get_state()
            if batches.samples_from_state:
                # On-policy: the next batch is sampled from this step's params, so
                # wait for the step (its time is the teacher's scoring + the update).
                last_loss = _finite_loss(metrics, step, ckpt)
                host_metrics = dict(host_metrics, step_seconds=time.perf_counter() - started)
                item = _next_batch(batches, step, state, run.total_steps)
            else:
                # The step runs asynchronously: prepare the next batch on the host
                # meanwhile, and only then wait for this step's loss.
                item = _next_batch(batches, step, state, run.total_steps)
                last_loss = _finite_loss(metrics, step, ckpt)
            tokens = float(metrics["tokens"])
            row = dict(metrics, **host_metrics)
            if evaluate and _evaluation_due(run, step):
                evaluation = evaluate(step, state)
                row.update(evaluation)
            logger.log(step, row, tokens, batches.source_tokens(data_state),
                       force=bool(evaluate) and _evaluation_due(run, step))
            if ckpt.should_save(step):
                ckpt.save(step, state, distributed.gather_json(data_state), run.meta)
                logger.flush()       # a bucket's log keeps up with the checkpoints
            progress.update(1, status={"loss": last_loss}, tokens=tokens)
            for hook in hooks:
                hook(step, ckpt)
        if ckpt.latest_step() != step:
            ckpt.save(step, state, distributed.gather_json(data_state), run.meta, force=True)
    finally:
        ckpt.close()
        logger.close()
    return state, step, last_loss, evaluation


def _held_out_evaluation(run: TrainingRun, batches, teacher_params):
    """evaluate(step, state) -> eval/* metrics, for an on-policy run with held-out
    prompts; None otherwise."""
    if run.eval_set is None:
        return None

    def evaluate(step: int, state: TrainState) -> dict[str, float]:
        metrics = batches.evaluate(run.trainer, state.params, teacher_params)
        run.say(f"train: step {step} held-out " + ", ".join(
            f"{k} {v:.4f}" for k, v in metrics.items()))
        return metrics
    return evaluate


def _evaluation_due(run: TrainingRun, step: int) -> bool:
    every = run.config.on_policy.eval_every
    return step == run.total_steps or bool(every and step % every == 0)


def _finite_loss(metrics, step: int, ckpt: Checkpointer) -> float:
    loss = float(metrics["loss"])
    if not math.isfinite(loss):
        ckpt.wait()
        raise FloatingPointError(
            f"loss is {loss} at step {step}; stopping without saving that state. The "
            f"last good checkpoint is step {ckpt.latest_step()} in {ckpt.directory}")
    return loss


class _StepLogger:
    """Metrics rows every `log_every` steps: the step's metrics, tokens/s over the
    window since the last row, and MFU on accelerators with a known peak."""

    def __init__(self, run: TrainingRun, start: int):
        tc, dc = run.config.train, run.config.data
        self.every, self.total = tc.log_every, run.total_steps
        # With data.sources, cumulative target tokens per source (`tokens/<name>`). They
        # travel in the data iterator's checkpointed state, so a resumed run continues
        # them; with host_split="examples" each host counts its own rows, summed here.
        self.per_source = bool(dc.sources)
        self.sum_hosts = dc.host_split == "examples" and jax.process_count() > 1
        self.writer = MetricsWriter(run.workdir, resume_step=start, tensorboard=tc.tensorboard)
        self.flops_per_token = model_flops_per_token(run.cfg, dc.seq_len) + (
            model_flops_per_token(run.teacher_cfg, dc.seq_len, training=False)
            if run.teacher_cfg else 0.0)
        self.peak = peak_tflops_per_device(tc.peak_tflops)
        self.window_start, self.window_tokens = time.monotonic(), 0.0

    def write(self, step: int, row: dict[str, float]) -> None:
        """A row of its own (e.g. the held-out metrics before the first step)."""
        self.writer.write(step, row)

    def log(self, step: int, metrics, tokens: float,
            source_tokens: dict[str, int] | None = None, force: bool = False) -> None:
        self.window_tokens += tokens
        if step % self.every and step != self.total and not force:
            return
        elapsed = time.monotonic() - self.window_start
        row = {k: float(v) for k, v in metrics.items()}
        if self.per_source and source_tokens is not None:
            if self.sum_hosts:     # a collective: every host logs at the same steps
                per_host = distributed.gather_json(source_tokens)
                source_tokens = {n: sum(h.get(n, 0) for h in per_host) for n in source_tokens}
            row.update({f"tokens/{n}": float(v) for n, v in source_tokens.items()})
        row["tokens_per_s"] = self.window_tokens / elapsed if elapsed > 0 else 0.0
        if self.peak:
            row["mfu"] = (row["tokens_per_s"] * self.flops_per_token
                          / (self.peak * 1e12 * jax.device_count()))
        self.writer.write(step, row)
        self.window_start, self.window_tokens = time.monotonic(), 0.0

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------- export


def export(run: TrainingRun, state: TrainState) -> dict[str, Any]:
    """The final student as an HF directory that carries the format it was trained
    with: weights, the (possibly extended) tokenizer with the training chat template
    in tokenizer_config.json, and generation_config.json with the stop ids."""
    tc = run.config.train
    path = storage.absolute(tc.export_dir)
    params = distributed.fetch_to_host(state.params)  # collective: all hosts
    if not run.primary:
        return {"path": path}
    # One staged block: on a bucket the commit marker covers all three writers' files.
    with staged_export(path) as directory:
        return dict(_write_export(run, directory, params), path=path)


def _write_export(run: TrainingRun, path: str, params) -> dict[str, Any]:
    """The HF directory's files, into the local directory `path`."""
    tc = run.config.train
    models.save_hf_checkpoint(path, run.cfg, params, dtype=np.dtype(tc.export_dtype))
    template = run.config.data.chat_template or run.tokenizer.chat_template_source
    tokenizer_files = run.tokenizer.save_pretrained(path, chat_template=template)
    stop_ids = list(run.chat_format.stop_token_ids())
    models.save_generation_config(path, bos_token_id=run.tokenizer.bos_id,
                                  eos_token_ids=stop_ids, pad_token_id=run.tokenizer.pad_id)
    return {"path": path, "tokenizer_files": tokenizer_files + ["generation_config.json"],
            "stop_token_ids": stop_ids}


def _this_host_data_state(states: list[dict], host_split: str, directory: str, step: int) -> dict:
    """This host's iterator position from a checkpoint's per-host list."""
    if host_split == "rows":      # every host walks the same global stream
        return states[0]
    if len(states) != jax.process_count():
        raise ValueError(
            f"checkpoint {directory}/{step} holds the data positions of {len(states)} hosts, and "
            f"this run has {jax.process_count()}; with data.host_split='examples' a run resumes "
            "on the same number of hosts (host_split='rows' resumes on any)")
    return states[jax.process_index()]


def _check_memory(config) -> None:
    """Refuses, before anything is allocated, a run the memory planner says cannot
    fit (on accelerators that report their memory, or with train.device_memory_gib)."""
    if not config.train.check_memory:
        return
    gib = config.train.device_memory_gib
    memory = int(gib * planning.GIB) if gib else planning.device_memory_bytes()
    if not memory:
        return
    try:
        plan = planning.plan_from_config(config, jax.device_count(), memory)
    except planning.PlanError as e:
        raise planning.PlanError(
            f"{e}\n(the planner's activation terms are estimates; to run anyway, set "
            "train.check_memory=False)") from None
    logging.info("train: memory plan\n%s", plan.table())


def _next_batch(batches, step: int, state: TrainState, total_steps: int):
    """The next (batch, KDSettings, host metrics), or None when the run is complete
    or the data ran out."""
    if step >= total_steps:
        return None
    try:
        return batches.next(step, state)
    except StopIteration:
        logging.warning("train: data ran out at step %d of %d", step, total_steps)
        return None
