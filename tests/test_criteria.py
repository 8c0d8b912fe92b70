import fractions
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import compiled_examples
from hypothesis import given, settings
from hypothesis import strategies as st

import smc_jax.sparsity as sp
from smc_jax.sparsity.selection import sortable_key

PARAMS = {
    "a": {"kernel": jnp.array([[0.1, -0.5], [0.3, 0.3]]), "bias": jnp.ones(2)},
    "b": jnp.array([[0.3, 0.0, -0.9]]),
}


def as_list(masks):
    return [np.asarray(m).tolist() for _, m in sp.mask_items(masks)]


def reference_topk(scores, active, k):
    """Numpy reference: the k largest active scores, ties to the earliest flat position."""
    flat_scores = np.concatenate([np.ravel(s) for s in scores]).astype(np.float32)
    flat_active = np.concatenate([np.ravel(a) for a in active])
    order = np.lexsort((np.arange(flat_scores.size), -flat_scores))  # by score desc, then position
    order = order[flat_active[order]][:k]
    keep = np.zeros(flat_scores.size, bool)
    keep[order] = True
    out, start = [], 0
    for s in scores:
        out.append(keep[start:start + np.size(s)].reshape(np.shape(s)))
        start += np.size(s)
    return out


# ----------------------------------------------------------------------------- global magnitude


@pytest.mark.parametrize(
    "sparsity, expected",
    [
        (0.0, [[[True, True], [True, True]], [[True, True, True]]]),
        # k = int(7 * 0.8) = 5: 0.9, 0.5 and the three tied 0.3s; the zero goes
        (0.2, [[[False, True], [True, True]], [[True, False, True]]]),
        # k = 3: 0.9, 0.5, then the earliest of the tied 0.3s (a[1, 0])
        (0.5, [[[False, True], [True, False]], [[False, False, True]]]),
        (0.8, [[[False, False], [False, False]], [[False, False, True]]]),
        (0.9, [[[False, False], [False, False]], [[False, False, False]]]),
    ],
)
def test_global_magnitude_hand_computed(sparsity, expected):
    masks = sp.global_magnitude_masks(PARAMS, sp.prunable_masks(PARAMS), sparsity, tie_break="position")
    assert as_list(masks) == expected
    assert masks["a"]["bias"] is None


def test_global_magnitude_keeps_k_where_the_original_keeps_k_minus_one():
    w = jnp.arange(1.0, 11.0).reshape(2, 5)
    params = {"w": w}
    masks = sp.global_magnitude_masks(params, sp.prunable_masks(params), 0.3)
    k = int(10 * 0.7)
    tau = np.sort(np.abs(np.asarray(w)).ravel())[::-1][k - 1]  # original: k-th largest, strict >
    original = np.abs(np.asarray(w)) > tau
    assert original.sum() == k - 1
    assert int(masks["w"].sum()) == k
    np.testing.assert_array_equal(np.asarray(masks["w"]), np.abs(np.asarray(w)) >= tau)


def test_global_magnitude_counts_all_prunable_weights_and_keeps_a_subset_of_active():
    params = {"w": jnp.arange(1.0, 11.0)[None, :]}
    active = jnp.array([[True] * 5 + [False] * 5])  # the five largest are inactive
    masks = sp.global_magnitude_masks(params, {"w": active}, 0.6)  # k = int(10 * 0.4) = 4
    np.testing.assert_array_equal(np.asarray(masks["w"]), [[False, True, True, True, True] + [False] * 5])
    fewer = sp.global_magnitude_masks(params, {"w": active}, 0.2)  # k = 8 > 5 active: keep all active
    np.testing.assert_array_equal(np.asarray(fewer["w"]), np.asarray(active))


def test_snip_keeps_the_exact_count_when_scores_tie_at_zero():
    params = {"w": jnp.array([[1.0, 2.0, 3.0, 4.0, 5.0]]), "v": jnp.array([[1.0, 1.0, 1.0, 1.0, 1.0]])}
    grads = {"w": jnp.array([[0.0, 0.0, 1.0, 0.0, 1.0]]), "v": jnp.array([[0.0, 2.0, 0.0, 0.0, 0.0]])}
    masks = sp.snip_masks(params, grads, sp.prunable_masks(params), 0.2, tie_break="position")  # keep 8 of 10
    # 7 scores are 0. Leaves in tree order (v before w). Nonzero: v[1]=2, w[2]=3, w[4]=5; the five earliest zeros:
    # v[0], v[2], v[3], v[4], w[0].
    np.testing.assert_array_equal(np.asarray(masks["v"]), [[True, True, True, True, True]])
    np.testing.assert_array_equal(np.asarray(masks["w"]), [[True, False, True, False, True]])
    assert sum(int(m.sum()) for _, m in sp.mask_items(masks)) == 8
    # the original's strict threshold keeps only the 3 nonzero scores: sparsity 0.7 instead of 0.2


def test_snip_score_is_weight_times_gradient():
    params = {"w": jnp.array([[4.0, 1.0, 2.0]])}
    grads = {"w": jnp.array([[0.1, 3.0, -1.0]])}  # |w g| = 0.4, 3, 2
    masks = sp.snip_masks(params, grads, sp.prunable_masks(params), 0.5)  # keep int(1.5) = 1
    np.testing.assert_array_equal(np.asarray(masks["w"]), [[False, True, False]])


# ------------------------------------------------------------------------------ random


def test_random_masks_bernoulli_rate_subset_and_determinism():
    params = {"w": jnp.zeros((200, 100)), "v": jnp.zeros((100, 100)), "b": jnp.zeros(10)}
    masks = sp.prunable_masks(params)
    masks["v"] = masks["v"].at[:50].set(False)
    out = sp.random_masks(jax.random.key(3), masks, 0.7)
    density = float(out["w"].mean())
    assert abs(density - 0.3) < 0.01  # 20000 draws: std 0.0032
    assert not bool((out["v"] & ~masks["v"]).any())
    assert out["b"] is None
    again = sp.random_masks(jax.random.key(3), masks, 0.7)
    np.testing.assert_array_equal(np.asarray(out["w"]), np.asarray(again["w"]))
    other = sp.random_masks(jax.random.key(4), masks, 0.7)
    assert bool((out["w"] != other["w"]).any())


def test_random_layerwise_masks_have_exact_counts():
    params = {"w": jnp.zeros((30, 10)), "v": jnp.zeros((10, 10))}
    masks = sp.prunable_masks(params)
    out = sp.random_layerwise_masks(jax.random.key(0), masks, {"w": 0.25, "v": 0.5})
    assert int(out["w"].sum()) == 75 and int(out["v"].sum()) == 50
    with pytest.raises(ValueError, match="no density given for prunable leaf 'v'"):
        sp.random_layerwise_masks(jax.random.key(0), masks, {"w": 0.25})


# -------------------------------------------------------------------------------- RigL


def test_rigl_hand_computed():
    masks = sp.global_magnitude_masks(PARAMS, sp.prunable_masks(PARAMS), 0.5, tie_break="position")
    grads = {"a": {"kernel": jnp.zeros((2, 2)), "bias": jnp.ones(2)}, "b": jnp.array([[2.0, 5.0, 0.0]])}
    out = sp.rigl_update(PARAMS, grads, masks, 0.5, tie_break="position")
    # a: active {0.5 @ (0,1), 0.3 @ (1,0)}; drop ceil(0.5*2)=1, the smaller (1,0); zero grads: grow the
    # earliest inactive position (0,0). b: drop its only weight, regrow the largest |g| (index 1).
    assert as_list(out) == [[[True, True], [False, False]], [[False, True, False]]]


def test_rigl_just_dropped_weight_can_regrow():
    params = {"w": jnp.array([[0.1, 5.0, 0.0, 0.0]])}
    masks = {"w": jnp.array([[True, True, False, False]])}
    grads = {"w": jnp.array([[9.0, 0.0, 1.0, 2.0]])}
    out = sp.rigl_update(params, grads, masks, 0.5)  # drop 0.1, regrow it (largest |g|)
    np.testing.assert_array_equal(np.asarray(out["w"]), np.asarray(masks["w"]))


def test_rigl_drop_count_is_ceil():
    params = {"w": jnp.arange(1.0, 11.0)[None, :]}
    masks = {"w": jnp.ones((1, 10), bool)}
    grads = {"w": jnp.zeros((1, 10))}
    masks = {"w": masks["w"].at[0, :3].set(False)}  # 7 active: ceil(0.3 * 7) = 3 dropped
    out = sp.rigl_update(params, grads, masks, 0.3, tie_break="position")
    # drop 4, 5, 6 (smallest active); regrow 3 earliest inactive of {0,1,2,3,4,5}: 0, 1, 2
    np.testing.assert_array_equal(np.asarray(out["w"])[0], [1, 1, 1, 0, 0, 0, 1, 1, 1, 1])


def test_rigl_with_traced_drop_fraction_matches_eager():
    key = jax.random.key(0)
    params = {"w": jax.random.normal(key, (64, 32)), "v": jax.random.normal(jax.random.key(1), (32, 8))}
    grads = {"w": jax.random.normal(jax.random.key(2), (64, 32)), "v": jnp.zeros((32, 8))}
    masks = sp.random_masks(jax.random.key(5), sp.prunable_masks(params), 0.8)
    jitted = jax.jit(sp.rigl_update)
    for fraction in (0.0, 0.013, 0.3, 0.5, 1.0):
        eager = sp.rigl_update(params, grads, masks, np.float32(fraction))
        traced = jitted(params, grads, masks, jnp.float32(fraction))
        for (_, a), (_, b), (_, m) in zip(sp.mask_items(eager), sp.mask_items(traced), sp.mask_items(masks)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            assert int(a.sum()) == int(m.sum())


def test_bad_values_raise_value_errors():
    masks = sp.prunable_masks(PARAMS)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
            sp.global_magnitude_masks(PARAMS, masks, bad)
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        sp.random_masks(jax.random.key(0), masks, 1.0)
    with pytest.raises(ValueError, match="drop_fraction must be in"):
        sp.rigl_update(PARAMS, PARAMS, masks, 1.5)
    with pytest.raises(ValueError, match="masks do not match grads"):
        sp.snip_masks(PARAMS, {"a": PARAMS["a"]}, masks, 0.5)


# ------------------------------------------------------------------------- properties


score_values = st.sampled_from([0.0, -0.0, 0.25, -0.25, 1.0, 3.5, -7.0, 1e-30, 1e30])


@st.composite
def scored_tree(draw):
    shapes = draw(st.lists(st.tuples(st.integers(1, 6), st.integers(1, 7)), min_size=1, max_size=4))
    scores, active = [], []
    for shape in shapes:
        n = math.prod(shape)
        values = draw(st.lists(st.one_of(score_values, st.floats(-10, 10, width=32)), min_size=n, max_size=n))
        scores.append(np.array(values, np.float32).reshape(shape))
        active.append(np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n))).reshape(shape))
    total = sum(np.size(s) for s in scores)
    return scores, active, draw(st.integers(0, total + 2))


@settings(max_examples=compiled_examples(60), deadline=None)
@given(scored_tree())
def test_global_topk_matches_the_reference_exactly(case):
    scores, active, k = case
    score_tree = {f"l{i}": jnp.asarray(s) for i, s in enumerate(scores)}
    mask_tree = {f"l{i}": jnp.asarray(a) for i, a in enumerate(active)}
    out = sp.global_topk_masks(score_tree, mask_tree, k, tie_break="position")
    expected = reference_topk(scores, active, k)
    for i, exp in enumerate(expected):
        np.testing.assert_array_equal(np.asarray(out[f"l{i}"]), exp)
    assert sum(int(m.sum()) for m in out.values()) == min(k, int(sum(a.sum() for a in active)))


@settings(max_examples=compiled_examples(40), deadline=None)
@given(scored_tree(), st.data())
def test_layerwise_topk_matches_the_reference_per_leaf(case, data):
    scores, active, _ = case
    ks = [data.draw(st.integers(0, np.size(s) + 1)) for s in scores]
    score_tree = {f"l{i}": jnp.asarray(s) for i, s in enumerate(scores)}
    mask_tree = {f"l{i}": jnp.asarray(a) for i, a in enumerate(active)}
    out = sp.layerwise_topk_masks(score_tree, mask_tree, {f"l{i}": k for i, k in enumerate(ks)},
                                  tie_break="position")
    for i, (s, a, k) in enumerate(zip(scores, active, ks)):
        np.testing.assert_array_equal(np.asarray(out[f"l{i}"]), reference_topk([s], [a], k)[0])


@settings(max_examples=compiled_examples(40), deadline=None)
@given(scored_tree(), st.floats(0.0, 0.999))
def test_global_magnitude_exact_count_idempotent_and_jit_agrees(case, sparsity):
    scores, _, _ = case
    params = {f"l{i}": jnp.asarray(s) for i, s in enumerate(scores)}
    masks = sp.prunable_masks(params, min_ndim=1)
    n = sp.num_prunable(masks)
    out = sp.global_magnitude_masks(params, masks, sparsity)
    assert sum(int(m.sum()) for _, m in sp.mask_items(out)) == int(n * (1 - sparsity))
    again = sp.global_magnitude_masks(sp.apply_masks(params, out), out, sparsity)
    jitted = jax.jit(lambda p, m: sp.global_magnitude_masks(p, m, sparsity))(params, masks)
    for key in params:
        np.testing.assert_array_equal(np.asarray(again[key]), np.asarray(out[key]))
        np.testing.assert_array_equal(np.asarray(jitted[key]), np.asarray(out[key]))


@settings(max_examples=compiled_examples(40), deadline=None)
@given(scored_tree(), st.floats(0.0, 1.0, width=32), st.integers(0, 2**31 - 1))
def test_rigl_conserves_per_leaf_density(case, fraction, seed):
    scores, active, _ = case
    params = {f"l{i}": jnp.asarray(s) for i, s in enumerate(scores)}
    masks = {f"l{i}": jnp.asarray(a) for i, a in enumerate(active)}
    grads = {k: jax.random.normal(jax.random.fold_in(jax.random.key(seed), i), v.shape) * (i % 2)
             for i, (k, v) in enumerate(params.items())}
    out = sp.rigl_update(params, grads, masks, fraction, tie_break="position")
    for key in params:
        n_on = int(masks[key].sum())
        assert int(out[key].sum()) == n_on
        # reference: drop the r smallest |w| (earliest first), grow the r largest |g| among the rest
        r = math.ceil(fraction * n_on)  # Python's float64 product, as SMC-Bench counts
        w, g, m = np.abs(np.asarray(params[key])), np.abs(np.asarray(grads[key])), np.asarray(masks[key])
        dropped = reference_topk([-w], [m], r)[0]
        kept = m & ~dropped
        grown = reference_topk([g], [~kept], r)[0]
        np.testing.assert_array_equal(np.asarray(out[key]), kept | grown)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.floats(0.0, 1.0, width=32), st.sampled_from([1e-45, 1.2e-38, 0.1, 0.3, 1 / 3, 0.999999])),
       st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([1, 7, 2**24 + 1, 2**31 - 1, 2**32 - 1])))
def test_scaled_count_is_exact(fraction, n):
    exact = fractions.Fraction(float(np.float32(fraction))) * n  # exact for the float32 value
    assert int(sp.scaled_count(fraction, n)) == math.floor(exact)
    assert int(sp.scaled_count(fraction, n, ceil=True)) == math.ceil(exact)


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, width=32), st.floats(allow_nan=False, width=32))
def test_sortable_key_preserves_order(x, y):
    kx, ky = int(sortable_key(jnp.float32(x))), int(sortable_key(jnp.float32(y)))
    if x < y:
        assert kx < ky
    elif x > y:
        assert kx > ky
    else:
        assert kx == ky  # includes -0.0 == 0.0
