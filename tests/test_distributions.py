import math

import pytest

import smc_jax.sparsity as sp


def test_erk_hand_computed_with_densification():
    shapes = {"small": (10, 10), "big": (100, 100)}
    # raw: small 20/100 = 0.2, big 200/10000 = 0.02; budget 0.5 * 10100 = 5050.
    # eps = 5050 / (0.2*100 + 0.02*10000) = 22.95 -> small would be 4.59 > 1: made dense.
    # then eps = (5050 - 100) / 200 = 24.75 -> big density 0.495.
    densities = sp.erk_densities(shapes, 0.5)
    assert densities["small"] == 1.0
    assert densities["big"] == pytest.approx(0.495)
    kept = sum(math.prod(s) * densities[n] for n, s in shapes.items())
    assert kept == pytest.approx(5050)


def test_erk_without_overflow_and_power_scale():
    shapes = {"a": (100, 100), "b": (200, 50)}  # raw a = 0.02, b = 0.025
    densities = sp.erk_densities(shapes, 0.1)
    eps = 2000 / (0.02 * 10000 + 0.025 * 10000)
    assert densities == pytest.approx({"a": eps * 0.02, "b": eps * 0.025})
    assert sp.erk_densities(shapes, 0.1, power_scale=0.0) == pytest.approx({"a": 0.1, "b": 0.1})
    assert sp.erk_densities(shapes, 1.0) == {"a": 1.0, "b": 1.0}
    assert sp.erk_densities(shapes, 0.0) == {"a": 0.0, "b": 0.0}


def test_uniform_and_bad_density():
    assert sp.uniform_densities({"a": (2, 2), "b": (3,)}, 0.3) == {"a": 0.3, "b": 0.3}
    with pytest.raises(ValueError, match="density must be in"):
        sp.erk_densities({"a": (2, 2)}, 1.5)
