"""Orbax checkpoints of a training run: the newest states for resuming and the best evaluation.

Saves are asynchronous (orbax copies the arrays to host before ``save`` returns, so the state may be
donated right after) and atomic: orbax writes ``<step>.orbax-checkpoint-tmp`` and renames it to ``<step>``
once complete, so a save killed midway is never restored. Only process 0 writes in multi-host runs.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any


def _key(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _arrays(tree: PyTree) -> dict[tuple[str, ...], tuple[tuple[int, ...], np.dtype]]:
    """``{path: (shape, dtype)}`` of the array leaves; NamedTuples and tuples keyed as orbax stores them."""
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]
    return {tuple(_key(k) for k in path): (tuple(leaf.shape), np.dtype(leaf.dtype))
            for path, leaf in flat if hasattr(leaf, "shape") and hasattr(leaf, "dtype")}


def _abstract(like: PyTree) -> PyTree:
    """``like`` as ShapeDtypeStructs carrying its shardings (one local device where it has none)."""
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def leaf(x):
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding if sharding is not None else default)

    return jax.tree.map(leaf, like)


class RunCheckpoints:
    """Checkpoints of one run under `directory` (e.g. WORKDIR/checkpoints): `latest/` for resuming and
    `best/` for the best evaluation.

    Each step holds the state tree (``StandardSave``) and a JSON dict of host metadata (``JsonSave``;
    tuples come back as lists). Saving a step at or before the newest saved one is skipped, not
    overwritten (a committed checkpoint is never removed before its replacement is complete);
    ``save_best`` first drops best steps newer than ``step``, left by a run resumed from an earlier one.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 1):
        if int(keep) < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        path = os.fspath(directory)
        self.directory = path if "://" in path else os.path.abspath(path)

        def manager(name: str, n: int) -> ocp.CheckpointManager:
            return ocp.CheckpointManager(
                os.path.join(self.directory, name),
                item_names=("state", "meta"),
                item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
                options=ocp.CheckpointManagerOptions(
                    create=True, preservation_policy=ocp.checkpoint_managers.LatestN(n),
                    # latest/ and best/ save the same step at once: their multi-process barriers need their own keys
                    multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)),
            )

        self._latest = manager("latest", int(keep))
        self._best = manager("best", 1)

    @staticmethod
    def _save(mngr: ocp.CheckpointManager, step: int, tree: PyTree, meta: dict) -> None:
        mngr.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                     meta=ocp.args.JsonSave(dict(meta))))

    def _restore(self, mngr: ocp.CheckpointManager, like: PyTree) -> tuple[PyTree, dict] | None:
        self.wait()
        step = mngr.latest_step()
        if step is None:
            return None
        where = f"{mngr.directory / str(step)}"
        saved = _arrays(mngr.item_metadata(step)["state"].tree)
        wanted = _arrays(like)
        diff = sorted((p for p in saved.keys() | wanted.keys() if saved.get(p) != wanted.get(p)),
                      key=lambda p: (len(p), p))
        if diff:
            def show(x):
                return "absent" if x is None else f"{x[1]}{list(x[0])}"
            raise ValueError(
                f"checkpoint {where} belongs to another model/config: {'/'.join(diff[0])} saved "
                f"{show(saved.get(diff[0]))}, current {show(wanted.get(diff[0]))} ({len(diff)} differing "
                "leaves); resume with the same model/config or use another directory")
        try:
            out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(like)),
                                                             meta=ocp.args.JsonRestore()))
        except ValueError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"checkpoint {where} belongs to another model/config: {first}") from err
        return out["state"], out["meta"]

    def latest_step(self) -> int | None:
        """The newest step under ``latest/`` (including a save still in flight; :meth:`wait` first), or None."""
        return self._latest.latest_step()

    def save(self, step: int, state: PyTree, meta: dict) -> None:
        """Save ``state`` and ``meta`` at ``step`` (asynchronously), keeping the ``keep`` newest steps."""
        self._save(self._latest, step, state, meta)

    def restore(self, like: PyTree) -> tuple[PyTree, dict] | None:
        """``(state, meta)`` of the newest step, sharded as ``like`` (concrete or abstract); None if none.

        Raises a ValueError naming the checkpoint when its arrays (paths, shapes, dtypes) differ from ``like``'s.
        """
        return self._restore(self._latest, like)

    def save_best(self, step: int, tree: PyTree, meta: dict) -> None:
        """Replace the best checkpoint with ``tree`` (e.g. ``{"params": ..., "masks": ...}``) and ``meta``."""
        self._best.wait_until_finished()
        for newer in [s for s in self._best.all_steps() if s > int(step)]:
            self._best.delete(newer)
        self._save(self._best, step, tree, meta)

    def restore_best(self, like: PyTree) -> tuple[PyTree, dict] | None:
        """``(tree, meta)`` of the best checkpoint, as :meth:`restore`; None if none."""
        return self._restore(self._best, like)

    def best_step(self) -> int | None:
        """The step of the best checkpoint (including a save still in flight), or None."""
        return self._best.latest_step()

    def wait(self) -> None:
        """Block until the pending saves are committed."""
        self._latest.wait_until_finished()
        self._best.wait_until_finished()

    def close(self) -> None:
        """Finish the pending saves and release orbax's resources."""
        self._latest.close()
        self._best.close()

    def __enter__(self) -> RunCheckpoints:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
