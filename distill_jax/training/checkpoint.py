"""Orbax checkpoints of the whole run: train state, data-iterator state, and
metadata (the model config, so a directory from another model is refused).

Saves are asynchronous (training continues while arrays are written), every
`save_every` steps and at the end, keeping the last `keep`. A checkpoint is
only visible once complete (orbax writes to a temporary name and renames), so a
kill at any moment leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import os
from typing import Any

import orbax.checkpoint as ocp


def _plain(obj: Any) -> Any:
    """JSON-safe copy (numpy scalars in iterator states become Python numbers)."""
    return json.loads(json.dumps(obj, default=lambda x: x.item() if hasattr(x, "item") else str(x)))


class Checkpointer:
    def __init__(self, directory: str, save_every: int, keep: int = 3, async_save: bool = True):
        # Local paths are made absolute; URLs (gs://...) go to orbax as they are.
        self.directory = directory if "://" in directory else os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
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
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
