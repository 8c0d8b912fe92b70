"""Layer budgets: how a target density is split across prunable leaves.

``bernoulli`` (SMC-Bench's ``random``: every element kept with probability 1 − s, uniform in expectation),
``uniform`` (every leaf exactly at the target density) and ``erk`` (Erdős–Rényi-Kernel, Evci et al. 2020).
Global rules (OMP, GMP, IMP, SNIP) need no budget: one threshold over the whole tree decides.
"""

from __future__ import annotations

import math

DISTRIBUTIONS = ("bernoulli", "uniform", "erk")


def _check_density(density: float) -> float:
    density = float(density)
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    return density


def uniform_densities(shapes: dict[str, tuple[int, ...]], density: float) -> dict[str, float]:
    """Every leaf at ``density``."""
    density = _check_density(density)
    return {name: density for name in shapes}


def erk_densities(
    shapes: dict[str, tuple[int, ...]], density: float, power_scale: float = 1.0
) -> dict[str, float]:
    """Per-layer densities of the Erdős–Rényi-Kernel rule, RigL's definition.

    A layer's raw density is ``(Σ dims / Π dims) ** power_scale``; one scale ε makes the parameter-weighted
    mean density equal ``density``. A layer with ε·raw > 1 is made dense, and ε is recomputed over the
    others until none overflows (iterative densification). ``power_scale=0`` gives uniform densities.
    """
    density = _check_density(density)
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    raw = {name: (sum(shape) / sizes[name]) ** power_scale for name, shape in shapes.items() if sizes[name]}
    dense: set[str] = set()
    while True:
        sparse = [name for name in raw if name not in dense]
        # Weights the non-dense layers must hold: the total budget minus the dense layers' full size.
        budget = sum(sizes[n] * density for n in raw) - sum(sizes[n] for n in dense)
        divisor = sum(raw[n] * sizes[n] for n in sparse)
        if not sparse or divisor == 0:
            eps = 0.0
            break
        eps = budget / divisor
        max_raw = max(raw[n] for n in sparse)
        if eps * max_raw <= 1.0:
            break
        dense.update(n for n in sparse if raw[n] == max_raw)
    return {
        name: 1.0 if name in dense else (min(1.0, max(0.0, eps * raw[name])) if name in raw else density)
        for name in shapes
    }
