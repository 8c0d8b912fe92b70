"""Mask pytrees: which leaves are prunable, applying masks, counting and reporting.

A mask tree has the structure of the params tree: a ``bool`` array of the leaf's shape where the leaf is
prunable and ``None`` where it is not (jaxpruner's convention). No float masks anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def _is_none(x: Any) -> bool:
    return x is None


def key_name(entry: Any) -> str:
    """One path entry of a pytree key path as a string (dict key, attribute name or index)."""
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def path_str(path: Sequence[Any]) -> str:
    """A jax key path joined with ``/``, e.g. ``'encoder/dense/kernel'``."""
    return "/".join(key_name(entry) for entry in path)


def _as_patterns(patterns: str | Iterable[str], what: str) -> list[re.Pattern]:
    if isinstance(patterns, str):
        patterns = (patterns,)
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as err:
            raise ValueError(f"invalid {what} regex {pattern!r}: {err}") from None
    return compiled


def prunable_masks(
    params: PyTree,
    include: str | Iterable[str] = (),
    exclude: str | Iterable[str] = (),
    min_ndim: int = 2,
) -> PyTree:
    """All-True ``bool`` masks on the prunable leaves of ``params``, ``None`` elsewhere.

    A leaf is prunable when ``ndim >= min_ndim``, its ``/``-joined path fully matches one of the
    ``include`` regexes (when any are given) and matches none of the ``exclude`` regexes
    (``re.fullmatch`` for both; write ``'.*pooler.*'`` for a substring rule).
    """
    include_re = _as_patterns(include, "include")
    exclude_re = _as_patterns(exclude, "exclude")

    def rule(path, leaf):
        name = path_str(path)
        if np.ndim(leaf) < min_ndim:
            return None
        if include_re and not any(p.fullmatch(name) for p in include_re):
            return None
        if any(p.fullmatch(name) for p in exclude_re):
            return None
        return jnp.ones(np.shape(leaf), dtype=bool)

    return jax.tree_util.tree_map_with_path(rule, params)


def mask_items(masks: PyTree) -> list[tuple[str, jax.Array]]:
    """``[(path, mask)]`` for the prunable leaves of a mask tree, in tree order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(masks, is_leaf=_is_none)
    return [(path_str(path), mask) for path, mask in flat if mask is not None]


def check_masks(params: PyTree, masks: PyTree, what: str = "params") -> None:
    """Raise ``ValueError`` unless ``masks`` is a bool mask tree matching ``params`` leaf for leaf."""
    flat_m, tree_m = jax.tree_util.tree_flatten_with_path(masks, is_leaf=_is_none)
    flat_p, tree_p = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_none)
    if tree_m != tree_p:
        mask_paths = {path_str(p) for p, _ in flat_m}
        param_paths = {path_str(p) for p, _ in flat_p}
        missing = sorted(param_paths - mask_paths)[:5]
        extra = sorted(mask_paths - param_paths)[:5]
        detail = f"{what} leaves without a mask entry: {missing}; mask entries not in {what}: {extra}"
        raise ValueError(
            f"masks do not match {what}: the trees differ ({detail}); build masks with "
            f"prunable_masks({what}) so that every leaf has a bool array or None"
        )
    for (path, mask), (_, leaf) in zip(flat_m, flat_p):
        if mask is None:
            continue
        if leaf is None:
            raise ValueError(f"masks do not match {what}: {path_str(path)!r} is masked but {what} has None there")
        if getattr(mask, "dtype", None) != jnp.bool_:
            raise ValueError(
                f"mask for {path_str(path)!r} has dtype {getattr(mask, 'dtype', type(mask))}; masks must be "
                "bool arrays (no float masks)"
            )
        if tuple(np.shape(mask)) != tuple(np.shape(leaf)):
            raise ValueError(
                f"masks do not match {what}: {path_str(path)!r} has mask shape {tuple(np.shape(mask))} but "
                f"{what} shape {tuple(np.shape(leaf))}"
            )


def map_masked(fn: Callable[..., Any], masks: PyTree, *trees: PyTree) -> PyTree:
    """``fn(mask, *leaves)`` on prunable leaves; ``None`` where the mask is ``None``."""
    return jax.tree.map(
        lambda m, *xs: None if m is None else fn(m, *xs), masks, *trees, is_leaf=_is_none
    )


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
    """``params`` with masked-out weights set to 0; leaves whose mask is ``None`` are untouched."""
    check_masks(params, masks)
    return jax.tree.map(
        lambda m, p: p if m is None else jnp.where(m, p, jnp.zeros((), p.dtype)),
        masks,
        params,
        is_leaf=_is_none,
    )


def mask_shapes(masks: PyTree) -> dict[str, tuple[int, ...]]:
    """``{path: shape}`` of the prunable leaves."""
    return {path: tuple(np.shape(mask)) for path, mask in mask_items(masks)}


def num_prunable(masks: PyTree) -> int:
    """Number of prunable weights (active or not): the N of the global-threshold rules."""
    return int(sum(int(np.prod(shape, dtype=np.int64)) for shape in mask_shapes(masks).values()))


def num_active(masks: PyTree) -> jax.Array:
    """Number of active (True) weights over the prunable leaves, as a device ``float32`` scalar."""
    counts = [jnp.sum(mask, dtype=jnp.float32) for _, mask in mask_items(masks)]
    return sum(counts, jnp.zeros((), jnp.float32))


def sparsity_report(masks: PyTree) -> dict[str, Any]:
    """``{"global": float, "per_leaf": {path: float}}``: fraction of zeros over the prunable leaves.

    Reads device values back to the host; call it at logging time, not inside the training step.
    """
    per_leaf, zeros, total = {}, 0, 0
    for path, mask in mask_items(masks):
        size = int(np.prod(np.shape(mask), dtype=np.int64))
        active = int(jnp.sum(mask, dtype=jnp.int32)) if size else 0
        per_leaf[path] = float(1.0 - active / size) if size else 0.0
        zeros += size - active
        total += size
    return {"global": float(zeros / total) if total else 0.0, "per_leaf": per_leaf}
