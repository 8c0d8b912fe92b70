import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import smc_jax.sparsity as sp

LABELS = {
    "dense": "Dense", "lth": "LTH (After)", "omp_after": "OMP (After)", "random_after": "Random (After)",
    "gmp": "GMP (During)", "omp_before": "OMP (Before)", "random_before": "Random (Before)",
    "snip": "SNIP (Before)", "rigl": "Random+RigL", "snip_rigl": "SNIP+RigL", "omp_rigl": "OMP+RigL",
}


def test_registry_names_labels_and_classes():
    assert list(sp.ALGORITHMS) == list(LABELS)
    for name, algorithm in sp.ALGORITHMS.items():
        assert algorithm.name == name
        assert algorithm.label == LABELS[name]
        assert dataclasses.is_dataclass(algorithm)
        assert type(algorithm).__doc__
    assert len({type(a) for a in sp.ALGORITHMS.values()}) == 9
    assert sp.ALGORITHMS["snip_rigl"] == sp.RigL(init="snip")
    assert sp.ALGORITHMS["omp_rigl"] == sp.RigL(init="omp")
    with pytest.raises(TypeError):
        sp.ALGORITHMS["new"] = sp.Dense()


def test_fields_change_with_replace_and_are_frozen():
    gmp = dataclasses.replace(sp.ALGORITHMS["gmp"], sparsity=0.9, update_frequency=500)
    assert (gmp.sparsity, gmp.update_frequency, gmp.begin_fraction, gmp.end_fraction) == (0.9, 500, 0.1, 0.8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        gmp.sparsity = 0.5
    rigl = sp.ALGORITHMS["rigl"]
    assert (rigl.drop_fraction, rigl.final_drop_fraction, rigl.end_fraction) == (0.5, 0.005, 1.0)
    assert (rigl.reset_moments, rigl.mask_gradients, rigl.fairseq_order) == (False, False, False)


def test_bad_names_and_values():
    with pytest.raises(ValueError, match="unknown algorithm 'rigl2'; choose one of: dense, lth, .*omp_rigl"):
        sp.get_algorithm("rigl2")
    with pytest.raises(ValueError, match=r"sparsity must be in \[0.0, 1.0\)"):
        sp.RigL(sparsity=1.0)
    with pytest.raises(ValueError, match="unknown RigL init 'magnitude'; choose one of: random, snip, omp"):
        sp.RigL(init="magnitude")
    with pytest.raises(ValueError, match="unknown distribution 'er'"):
        sp.RandomBefore(distribution="er")
    with pytest.raises(ValueError, match="applies to init='random' only"):
        sp.RigL(init="snip", distribution="erk")
    with pytest.raises(ValueError, match="update_frequency must be >= 1"):
        sp.GMP(update_frequency=0)
    with pytest.raises(ValueError, match="prune_fraction must be in"):
        sp.LTH(prune_fraction=1.0)


def params():
    keys = jax.random.split(jax.random.key(0), 3)
    return {"a": jax.random.normal(keys[0], (20, 10)), "b": jax.random.normal(keys[1], (10, 5)),
            "c": jnp.ones(5)}


def active(masks):
    return sum(int(m.sum()) for _, m in sp.mask_items(masks))


@pytest.mark.parametrize("name", ["omp_before", "omp_after", "snip", "snip_rigl", "omp_rigl"])
def test_init_masks_global_rules_keep_exact_counts(name):
    algorithm = dataclasses.replace(sp.ALGORITHMS[name], sparsity=0.7)
    p = params()
    grads = jax.tree.map(lambda x: x * 0 + 1.0, p)
    assert algorithm.needs_grads == ("snip" in name)
    masks = algorithm.init_masks(p, sp.prunable_masks(p), key=jax.random.key(1), grads=grads)
    assert active(masks) == int(250 * 0.3)


@pytest.mark.parametrize("distribution, per_leaf", [("uniform", {"a": 60, "b": 15}), ("erk", None)])
def test_random_init_distributions(distribution, per_leaf):
    p = params()
    masks = sp.RandomBefore(sparsity=0.7, distribution=distribution).init_masks(
        p, sp.prunable_masks(p), key=jax.random.key(0))
    if per_leaf:
        assert {k: int(m.sum()) for k, m in sp.mask_items(masks)} == per_leaf
    else:
        densities = sp.erk_densities({"a": (20, 10), "b": (10, 5)}, 0.3)
        assert {k: int(m.sum()) for k, m in sp.mask_items(masks)} == {
            "a": int(200 * densities["a"]), "b": int(50 * densities["b"])}


def test_missing_key_or_grads_is_a_clear_error():
    p = params()
    with pytest.raises(ValueError, match="needs a PRNG key"):
        sp.ALGORITHMS["random_before"].init_masks(p, sp.prunable_masks(p))
    with pytest.raises(ValueError, match="SNIP needs the gradients of one batch"):
        sp.ALGORITHMS["snip"].init_masks(p, sp.prunable_masks(p))


def test_static_algorithms_leave_masks_alone():
    p = params()
    for name in ("dense", "lth", "gmp"):
        masks = sp.prunable_masks(p)
        assert active(sp.ALGORITHMS[name].init_masks(p, masks)) == 250


def test_lth_pieces():
    lth = sp.LTH(sparsity=0.5)
    assert lth.num_rounds() == 4  # 1 - 0.8**3 = 0.488 < 0.495; 1 - 0.8**4 = 0.5904
    assert [round(lth.round_sparsity(k), 4) for k in range(5)] == [0.0, 0.2, 0.36, 0.488, 0.5904]
    initial, trained = params(), jax.tree.map(lambda x: x * 2.0 + 0.1, params())
    masks = sp.prunable_masks(initial)
    round1 = lth.prune(trained, masks, 1)
    assert active(round1) == int(250 * 0.8)
    round2 = lth.prune(sp.apply_masks(trained, round1), round1, 2)
    assert active(round2) == int(250 * 0.8**2)
    assert not any(bool((m2 & ~m1).any()) for (_, m1), (_, m2) in zip(sp.mask_items(round1), sp.mask_items(round2)))
    start = lth.start_params(initial, trained, round2)
    np.testing.assert_array_equal(np.asarray(start["a"]), np.where(round2["a"], initial["a"], 0))
    np.testing.assert_array_equal(np.asarray(start["c"]), np.asarray(initial["c"]))
    lrr = dataclasses.replace(lth, rewind=False).start_params(initial, trained, round2)
    np.testing.assert_array_equal(np.asarray(lrr["a"]), np.where(round2["a"], trained["a"], 0))
    with pytest.raises(ValueError, match="start at 1"):
        lth.prune(trained, masks, 0)


def test_update_steps_on_the_host():
    assert sp.ALGORITHMS["omp_before"].update_steps(1000) == []
    assert sp.GMP(update_frequency=100).update_steps(1000) == [100, 200, 300, 400, 500, 600, 700, 800]
    assert sp.RigL(update_frequency=300).update_steps(1000) == [300, 600, 900]
    assert sp.RigL(update_frequency=300, end_fraction=0.75).update_steps(1000) == [300, 600]
    rigl = sp.RigL(update_frequency=300)
    steps = jnp.arange(1, 1001)
    on_device = jax.vmap(lambda s: rigl.is_update_step(s, 1000))(steps)
    assert [int(s) for s in steps[on_device]] == rigl.update_steps(1000)
    gmp = sp.GMP(update_frequency=100)
    on_device = jax.vmap(lambda s: gmp.is_update_step(s, 1000))(steps)
    assert [int(s) for s in steps[on_device]] == gmp.update_steps(1000)


def test_sparsity_package_imports_only_jax_optax_numpy():
    code = (
        "import sys; import smc_jax.sparsity; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'flax', 'transformers', 'torch', 'gin', 'datasets', 'orbax'} "
        "or (m.startswith('smc_jax.') and not m.startswith('smc_jax.sparsity'))); print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
