"""Orbax checkpoints of the whole run: train state, data-iterator state, and
metadata (the model config, so a directory from another model is refused).

Saves are asynchronous (training continues while arrays are written), every
`save_every` steps and at the end, keeping the last `keep`. A checkpoint is
only visible once complete (orbax writes to a temporary name and renames), so a
kill at any moment leaves the previous checkpoint intact.

Where checkpoints can live. Orbax writes local paths and `gs://` itself (arrays
through tensorstore's own GCS driver), so there the directory goes to orbax as it
is, and several hosts can share it. Orbax cannot write any other URL scheme (`s3://`,
the test store `fakebucket://`), and it relies on renames an object store lacks. For
those, with a single process, orbax writes to a private local staging directory and
every finished step is published whole to `<directory>/<step>` (`storage.publish_dir`:
its files, then a commit marker); a resume downloads the newest committed step into a
fresh staging directory (steps without a marker, cut short by a kill, are ignored) and
orbax restores from there. Publishing happens when the previous asynchronous save is
complete: at the next save, at `wait()` and at `close()`. Several processes would each
need the others' shards in their staging directory, so a multi-process run with such a
scheme is refused (`check_directory`, before any work).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import jax
import orbax.checkpoint as ocp

from distill_jax import storage

# URL schemes orbax reads and writes itself ('' is a local path).
NATIVE_SCHEMES = ("", "gs")


def _plain(obj: Any) -> Any:
    """JSON-safe copy (numpy scalars in iterator states become Python numbers)."""
    return json.loads(json.dumps(obj, default=lambda x: x.item() if hasattr(x, "item") else str(x)))


def is_native(directory: str) -> bool:
    return storage.scheme(directory) in NATIVE_SCHEMES


def check_directory(directory: str) -> None:
    """Fails now for a checkpoint directory this run cannot use: a scheme without a
    backend, or a staged scheme (see the module docstring) with several processes."""
    storage.check_path(directory, "checkpoint directory")
    if not is_native(directory) and jax.process_count() > 1:
        raise ValueError(
            f"checkpoint directory {directory}: orbax cannot write "
            f"{storage.scheme(directory)}:// itself, and staging it locally works for one "
            f"process only (this run has {jax.process_count()}); use a gs:// bucket or a "
            "shared filesystem path (train.checkpoint_dir)")


class Checkpointer:
    def __init__(self, directory: str, save_every: int, keep: int = 3, async_save: bool = True):
        check_directory(directory)
        if storage.is_local(directory):
            directory = os.path.abspath(directory.removeprefix("file://"))
        self.directory = directory.rstrip("/")
        self.keep = keep
        # Orbax's own directory: the real one, or a local staging copy of a foreign URL.
        self._scratch = None if is_native(directory) else tempfile.mkdtemp(
            prefix="distill_jax-ckpt-")
        self._staging = self._scratch and os.path.join(self._scratch, "steps")
        self._published: set[int] = set()
        if self._staging:
            self._download_latest()
        self.manager = ocp.CheckpointManager(
            self._staging or self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, save_interval_steps=max(save_every, 1),
                enable_async_checkpointing=async_save, create=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        return self.manager.should_save(step)

    def save(self, step: int, state, data_states: list[dict], meta: dict,
             force: bool = False) -> bool:
        """`data_states`: every host's data-iterator state, in process order (process 0
        writes the JSON items, so the others' positions must be gathered first)."""
        if self._staging:
            self.wait()      # publishes the previous step before orbax may drop it locally
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(_plain({"hosts": data_states})),
            meta=ocp.args.JsonSave(_plain(meta))), force=force)

    def restore(self, step: int, abstract_state, expected_meta: dict) -> tuple[Any, list[dict]]:
        """(state, per-host data-iterator states) of `step`; refuses a checkpoint of
        another model."""
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        meta = meta["meta"]
        expected = _plain(expected_meta)
        for key in ("model",):
            if meta.get(key) != expected.get(key):
                old, new = meta.get(key) or {}, expected.get(key) or {}
                diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise ValueError(
                    f"checkpoint {self.directory}/{step} was written for a different {key} "
                    f"(differs in {', '.join(diff)}); use a new workdir or the matching config")
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return restored["state"], restored["data"]["hosts"]

    def wait(self) -> None:
        """Until every save is complete (and, when staged, published)."""
        self.manager.wait_until_finished()
        if self._staging:
            self._publish_finished()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()
            if self._scratch:
                shutil.rmtree(self._scratch, ignore_errors=True)

    # ------------------------------------------------------------ staged schemes

    def _committed_steps(self) -> list[int]:
        if not storage.isdir(self.directory):
            return []
        steps = [int(name) for name in storage.listdir(self.directory) if name.isdigit()]
        return sorted(s for s in steps if storage.is_committed(storage.join(self.directory,
                                                                            str(s))))

    def _download_latest(self) -> None:
        """The newest committed step into the (empty) staging directory, for orbax."""
        steps = self._committed_steps()
        self._published = set(steps)
        if not steps:
            return
        cache = os.path.join(self._scratch, "download")
        copy = storage.local_copy(storage.join(self.directory, str(steps[-1])), cache)
        os.remove(os.path.join(copy, storage.COMMIT_MARKER))    # not orbax's
        os.makedirs(self._staging)
        os.replace(copy, os.path.join(self._staging, str(steps[-1])))
        shutil.rmtree(cache)

    def _publish_finished(self) -> None:
        """Each finished local step not yet published, then the remote trimmed to `keep`."""
        for step in self.manager.all_steps():
            if step in self._published:
                continue
            # publish_dir consumes its source: give it hard links, orbax keeps its step.
            copy = os.path.join(self._scratch, "publish")
            shutil.rmtree(copy, ignore_errors=True)      # a failed publish's leftovers
            try:
                shutil.copytree(os.path.join(self._staging, str(step)), copy,
                                copy_function=os.link)
                storage.publish_dir(copy, storage.join(self.directory, str(step)))
            finally:
                shutil.rmtree(copy, ignore_errors=True)
            self._published.add(step)
        self._trim_remote()

    def _trim_remote(self) -> None:
        committed = self._committed_steps()
        for step in committed[:-self.keep] if self.keep else []:
            storage.withdraw_dir(storage.join(self.directory, str(step)))
            self._published.discard(step)
