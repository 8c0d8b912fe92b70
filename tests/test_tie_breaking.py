"""Tie-breaking and exact counts of the sparsity core against the rules of the original SMC-Bench code."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import smc_jax.sparsity as sp


def snip_case(names=("emb", "fc1", "fc2", "fc3"), seed=0):
    """An embedding and three linear layers; rows of the embedding and of fc1 unseen by the batch score 0."""
    rng = np.random.default_rng(seed)
    shapes = [(400, 32), (32, 64), (64, 64), (64, 16)]
    params, grads = {}, {}
    for name, shape in zip(names, shapes):
        params[name] = jnp.asarray(rng.normal(size=shape), jnp.float32)
        g = rng.normal(size=shape)
        if name == names[0]:
            g[rng.random(shape[0]) < 0.9] = 0.0  # rows absent from the SNIP batch
        elif name == names[1]:
            g[:, : shape[1] // 2] = 0.0
        grads[name] = jnp.asarray(g, jnp.float32)
    return params, grads


def kept_per_leaf(masks):
    return {name: int(m.sum()) for name, m in sp.mask_items(masks)}


def zero_stats(params, grads, masks, names):
    """Per leaf: the number of zero-score weights, and of them the number kept."""
    scores = {n: np.abs(np.asarray(params[n]) * np.asarray(grads[n])) for n in names}
    zeros = {n: int((scores[n] == 0).sum()) for n in names}
    kept = {n: int((np.asarray(masks[n]) & (scores[n] == 0)).sum()) for n in names}
    return zeros, kept


@pytest.mark.parametrize("names", [("emb", "fc1", "fc2", "fc3"), ("z_emb", "y_fc1", "x_fc2", "w_fc3")])
def test_snip_random_ties_spread_in_proportion_whatever_the_names(names):
    params, grads = snip_case(names)
    masks = sp.prunable_masks(params)
    n = sp.num_prunable(masks)
    k = int(n * (1 - 0.2))
    zeros, _ = zero_stats(params, grads, masks, names)
    total_zeros = sum(zeros.values())
    assert total_zeros / n > 0.6  # most scores tie at 0
    need = k - (n - total_zeros)  # the zero-score weights needed to reach the count
    assert 0 < need < total_zeros
    fractions = []
    for seed in range(4):
        out = sp.snip_masks(params, grads, masks, 0.2, seed=seed)
        assert sum(kept_per_leaf(out).values()) == k
        _, kept = zero_stats(params, grads, out, names)
        for name in names:
            if zeros[name] == 0:
                continue
            # Hypergeometric: `need` draws without replacement from `total_zeros`, zeros[name] of this leaf.
            p = zeros[name] / total_zeros
            mean = need * p
            sd = math.sqrt(need * p * (1 - p) * (total_zeros - need) / (total_zeros - 1))
            assert abs(kept[name] - mean) <= 5 * sd + 1, (name, kept[name], mean, sd)
        fractions.append(kept[names[0]] / zeros[names[0]])
    assert len(set(fractions)) > 1  # the seed changes the subset
    again = sp.snip_masks(params, grads, masks, 0.2, seed=3)
    assert all(np.array_equal(np.asarray(a), np.asarray(b))
               for (_, a), (_, b) in zip(sp.mask_items(again), sp.mask_items(out)))


def test_snip_position_ties_follow_leaf_order():
    params, grads = snip_case(("b_emb", "a_fc1", "c_fc2", "d_fc3"))
    masks = sp.prunable_masks(params)
    out = sp.snip_masks(params, grads, masks, 0.2, tie_break="position")
    zeros, kept = zero_stats(params, grads, out, ["a_fc1", "b_emb"])
    assert kept["a_fc1"] == zeros["a_fc1"]  # the first leaf by path keeps every tied zero
    assert kept["b_emb"] < zeros["b_emb"]


def original_snip(scores, k):
    """SMC-Bench's inline SNIP (gts/src/main.py): τ = the (k+1)-th largest score, keep score > τ."""
    flat = np.concatenate([np.ravel(s) for s in scores])
    tau = np.sort(flat)[::-1][k]
    return [s > tau for s in scores]


@pytest.mark.parametrize("sparsity", [0.2, 0.5, 0.9])
def test_faithful_snip_equals_the_original_threshold_and_overshoots(sparsity):
    params, grads = snip_case()
    masks = sp.prunable_masks(params)
    n = sp.num_prunable(masks)
    k = int(n * (1 - sparsity))
    out = sp.snip_masks(params, grads, masks, sparsity, tie_break="faithful")
    names = list(params)
    scores = [np.abs(np.asarray(params[x], np.float32) * np.asarray(grads[x], np.float32)) for x in names]
    for name, expected in zip(names, original_snip(scores, k)):
        np.testing.assert_array_equal(np.asarray(out[name]), expected)
    kept = sum(kept_per_leaf(out).values())
    nonzero = sum(int((s > 0).sum()) for s in scores)
    # Where the zero scores straddle the threshold all of them are dropped and the target is overshot.
    assert kept == min(k, nonzero)
    assert (kept < k) == (sparsity < 0.9)


def test_faithful_global_topk_matches_the_original_rule_on_random_ties():
    rng = np.random.default_rng(1)
    for trial in range(20):
        scores = [np.round(rng.normal(size=shape) * 3).astype(np.float32) for shape in [(7, 5), (3, 9), (11,)]]
        tree = {f"l{i}": jnp.asarray(s) for i, s in enumerate(scores)}
        masks = {name: jnp.ones(v.shape, bool) for name, v in tree.items()}
        k = int(rng.integers(0, 35 + 27 + 11))
        out = sp.global_topk_masks(tree, masks, k, tie_break="faithful")
        for i, expected in enumerate(original_snip(scores, k)):
            np.testing.assert_array_equal(np.asarray(out[f"l{i}"]), expected)


# ------------------------------------------------------------------------------------- counts


def formula_keep(n, final, t, t0, t1):
    """SPEC §2.5: k = int(N·(1 − s_t)), s_t = s_f·[1 − (1 − (t − t0)/(t1 − t0))³], in Python floats."""
    s_t = final if t >= t1 else final * (1 - (1 - (t - t0) / (t1 - t0)) ** 3)
    return int(n * (1 - s_t))


@pytest.mark.parametrize("n", [16_000_003, 125_000_000, 355_359_744, 400_000_000])
@pytest.mark.parametrize("final, total, frequency", [(0.893, 19250, 1000), (0.672, 3000, 500), (0.5, 6150, 100)])
def test_gmp_counts_equal_the_float64_formula_at_every_event(n, final, total, frequency):
    gmp = sp.GMP(sparsity=final, update_frequency=frequency)
    events, _, keep = gmp._schedule(n, total)
    t0, t1 = gmp.window(total)
    assert events and [int(x) for x in keep] == [formula_keep(n, final, t, t0, t1) for t in events]


def test_gmp_count_of_the_issue_example():
    gmp = sp.GMP(sparsity=0.893, update_frequency=1000)
    events, _, keep = gmp._schedule(16_000_003, 19250)
    # int(N·(1 − s_t)) = int(6,562,302.117): the float32 schedule gave 6,562,300; the original's strict
    # threshold keeps one fewer than the formula, 6,562,301 (the documented exact-count fix).
    assert int(keep[events.index(6000)]) == 6_562_302


def test_gmp_event_keeps_the_formula_count_through_the_optimizer():
    params = {"w": jax.random.normal(jax.random.key(0), (97, 103))}
    gmp = sp.GMP(sparsity=0.7, update_frequency=3)
    masks = sp.prunable_masks(params)
    events = gmp.update_steps(40)
    t0, t1 = gmp.window(40)
    for step in events:
        new = gmp.mask_update(jnp.int32(step), params, params, masks, 40)
        assert int(new["w"].sum()) == formula_keep(97 * 103, 0.7, step, t0, t1)


def test_rigl_drop_count_uses_the_float64_product():
    params = {"w": jnp.arange(1.0, 21.0)[None, :]}
    masks = {"w": jnp.arange(20)[None, :] % 2 == 0}  # 10 active: 1, 3, ..., 19
    grads = {"w": jnp.where(masks["w"], 0.0, jnp.arange(20.0)[None, :])}  # regrowth goes to inactive slots
    out = sp.rigl_update(params, grads, masks, 0.2)
    dropped = int((masks["w"] & ~out["w"]).sum())
    assert dropped == math.ceil(0.2 * 10) == 2  # float32(0.2)·10 = 2.00000003 would give 3
    assert int(out["w"].sum()) == 10


def test_rigl_schedule_counts_on_a_large_embedding():
    # SMC-Bench's cosine schedule over 19 updates on a 19.3M-weight embedding at density 0.5.
    rigl = sp.RigL(sparsity=0.5, update_frequency=1000)
    total, n_on = 19250, 19_300_000 // 2
    events = rigl.update_steps(total)
    assert len(events) == 19
    counts = jax.jit(lambda s: sp.ceil_product(rigl._drop_fractions(s, total), jnp.uint32(n_on)))
    fractions = [rigl.drop_fraction_at(t, total) for t in events]
    assert [int(counts(jnp.int32(t))) for t in events] == [math.ceil(p * n_on) for p in fractions]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.2, 0.1, 0.3, 1 / 3, 0.7, 5e-324, 0.005, 1.0])),
       st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 1000), st.sampled_from([10, 2**24 + 1, 2**32 - 1])))
def test_ceil_product_is_pythons_float64_ceil(fraction, n):
    assert int(sp.ceil_product(sp.float64_bits(fraction), n)) == math.ceil(fraction * n)
    widened = float(np.float32(fraction))
    assert int(sp.ceil_product(np.float32(fraction), n)) == math.ceil(widened * n)


# -------------------------------------------------------------------------------------- RigL ties


def original_rigl_drop(w, mask, r):
    """SMC-Bench's magnitude_prune: sort |w| over the whole tensor (stable), zero the first n_off + r."""
    if r == 0:
        return w != 0
    flat = np.abs(w).ravel()
    order = np.argsort(flat, kind="stable")
    new = mask.ravel().copy()
    new[order[: int(mask.size - mask.sum() + r)]] = False
    return new.reshape(mask.shape)


def test_rigl_faithful_drops_active_zeros_as_the_original_and_conserves_counts():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(40, 50)).astype(np.float32)
    mask = rng.random((40, 50)) < 0.5
    active = np.flatnonzero(mask)
    w.ravel()[active[rng.permutation(active.size)[:200]]] = 0.0  # 200 active weights exactly 0
    w[~mask] = 0.0
    grads = rng.normal(size=w.shape).astype(np.float32)
    params, masks = {"fc1": jnp.asarray(w)}, {"fc1": jnp.asarray(mask)}
    n_on = int(mask.sum())
    r = math.ceil(0.05 * n_on)
    faithful = np.asarray(sp.rigl_update(params, {"fc1": jnp.asarray(grads)}, masks, 0.05, tie_break="faithful")["fc1"])
    expected_kept = original_rigl_drop(w, mask, r)
    assert int((mask & ~expected_kept).sum()) > r  # the original drops more than r (active zeros)
    np.testing.assert_array_equal(faithful & expected_kept, expected_kept)  # every survivor of the drop stays
    assert int(faithful.sum()) == n_on  # and as many are regrown
    exact = np.asarray(sp.rigl_update(params, {"fc1": jnp.asarray(grads)}, masks, 0.05)["fc1"])
    assert int((mask & ~exact).sum()) <= r and int(exact.sum()) == n_on


def test_rigl_random_growth_ties_are_not_the_earliest_positions():
    params = {"w": jnp.ones((100, 20))}
    masks = {"w": jnp.zeros((100, 20), bool).at[:, :10].set(True)}
    grads = {"w": jnp.zeros((100, 20))}  # every growth score ties at 0; every magnitude ties at 1
    out = np.asarray(sp.rigl_update(params, grads, masks, 0.3, seed=1)["w"])
    assert out.sum() == 1000
    grown_rows = np.nonzero(out[:, 10:])[0]
    assert grown_rows.size > 0 and grown_rows.max() > 50  # spread over the rows, not packed at the top
    position = np.asarray(sp.rigl_update(params, grads, masks, 0.3, tie_break="position")["w"])
    assert np.nonzero(position[:, 10:])[0].max() < 50


def test_algorithms_take_the_run_seed_and_reject_unknown_tie_breaks():
    with pytest.raises(ValueError, match="unknown tie_break 'first'; choose one of: random, position, faithful"):
        sp.SNIP(tie_break="first")
    params, grads = snip_case()
    masks = sp.prunable_masks(params)
    a = sp.SNIP(sparsity=0.2, tie_seed=1).init_masks(params, masks, grads=grads)
    b = sp.SNIP(sparsity=0.2, tie_seed=2).init_masks(params, masks, grads=grads)
    assert kept_per_leaf(a) != kept_per_leaf(b) or not np.array_equal(np.asarray(a["emb"]), np.asarray(b["emb"]))
    faithful = sp.SNIP(sparsity=0.2, tie_break="faithful").init_masks(params, masks, grads=grads)
    assert sum(kept_per_leaf(faithful).values()) < int(sp.num_prunable(masks) * 0.8)
