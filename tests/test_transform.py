import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import smc_jax.sparsity as sp

P = {"w": jnp.array([[1.0, -2.0, 0.0, 0.0]]), "b": jnp.array([1.0])}
M = {"w": jnp.array([[True, True, False, False]]), "b": None}


def one_step(algorithm, grads, params=P, masks=M, inner=None, total_steps=10**6, **kwargs):
    opt = sp.sparse_optimizer(inner or optax.sgd(1.0), algorithm, masks, total_steps)
    state = opt.init(params)
    updates, state = opt.update(grads, state, params, **kwargs)
    return optax.apply_updates(params, updates), state


def rigl(**fields):
    return sp.RigL(sparsity=0.5, update_frequency=1, **fields)


def test_static_masks_dense_gradients_and_masked_params():
    masks = {"w": jnp.array([[True, False, True, True]]), "b": None}
    params = {"w": jnp.array([[1.0, -2.0, 0.5, 3.0]]), "b": jnp.array([1.0])}
    grads = {"w": jnp.array([[0.5, 1.0, 0.25, -1.0]]), "b": jnp.array([0.25])}
    new, state = one_step(sp.OMPBefore(), grads, params, masks)
    np.testing.assert_array_equal(np.asarray(new["w"]), [[0.5, 0.0, 0.25, 4.0]])
    np.testing.assert_array_equal(np.asarray(new["b"]), [0.75])
    assert int(state.count) == 1
    np.testing.assert_array_equal(np.asarray(sp.get_masks(state)["w"]), np.asarray(masks["w"]))


def test_rigl_arithmetic_order_uses_post_update_weights_and_regrows_at_zero():
    grads = {"w": jnp.array([[-3.0, 0.5, 0.9, 0.1]]), "b": jnp.array([0.0])}
    # p + u = [4, -2.5, -0.9, -0.1]; p' = [4, -2.5, 0, 0]: drop index 1; grow the largest |g| among
    # {1, 2, 3}: index 2, which starts at exactly 0.
    new, state = one_step(rigl(), grads)
    np.testing.assert_array_equal(np.asarray(sp.get_masks(state)["w"]), [[True, False, True, False]])
    np.testing.assert_array_equal(np.asarray(new["w"]), [[4.0, 0.0, 0.0, 0.0]])


def test_rigl_fairseq_order_uses_pre_update_weights_and_regrown_weights_get_the_update():
    grads = {"w": jnp.array([[-3.0, 0.5, 0.9, 0.1]]), "b": jnp.array([0.0])}
    # pre-update |p| = [1, 2]: drop index 0; grow the largest |g| among {0, 2, 3}: index 0 again.
    new, state = one_step(rigl(fairseq_order=True), grads)
    np.testing.assert_array_equal(np.asarray(sp.get_masks(state)["w"]), [[True, True, False, False]])
    np.testing.assert_array_equal(np.asarray(new["w"]), [[4.0, -2.5, 0.0, 0.0]])
    grads = {"w": jnp.array([[-0.5, 0.5, 0.9, 0.1]]), "b": jnp.array([0.0])}
    new, state = one_step(rigl(fairseq_order=True), grads)  # drop 0, grow 2, which takes its update
    np.testing.assert_array_equal(np.asarray(sp.get_masks(state)["w"]), [[False, True, True, False]])
    np.testing.assert_allclose(np.asarray(new["w"]), [[0.0, -2.5, -0.9, 0.0]])
    new, state = one_step(rigl(), grads)  # arithmetic order: same masks, regrown weight at 0
    np.testing.assert_array_equal(np.asarray(sp.get_masks(state)["w"]), [[False, True, True, False]])
    np.testing.assert_array_equal(np.asarray(new["w"]), [[0.0, -2.5, 0.0, 0.0]])


def test_host_hint_skips_or_forces_the_mask_update():
    grads = {"w": jnp.array([[-3.0, 0.5, 0.9, 0.1]]), "b": jnp.array([0.0])}
    _, skipped = one_step(rigl(), grads, is_update_step=False)
    np.testing.assert_array_equal(np.asarray(sp.get_masks(skipped)["w"]), np.asarray(M["w"]))
    not_due = sp.RigL(sparsity=0.5, update_frequency=2)
    _, state = one_step(not_due, grads)
    np.testing.assert_array_equal(np.asarray(sp.get_masks(state)["w"]), np.asarray(M["w"]))
    _, forced = one_step(not_due, grads, is_update_step=True)
    np.testing.assert_array_equal(np.asarray(sp.get_masks(forced)["w"]), [[True, False, True, False]])
    with pytest.raises(ValueError, match="is_update_step must be a Python bool or None"):
        jax.jit(lambda flag: one_step(not_due, grads, is_update_step=flag))(True)


def test_mask_gradients_keeps_the_inner_state_sparse():
    grads = {"w": jnp.array([[1.0, 1.0, 1.0, 1.0]]), "b": jnp.array([1.0])}
    inner = optax.sgd(0.1, momentum=0.9)
    _, dense_moments = one_step(sp.OMPBefore(), grads, inner=inner)
    _, masked = one_step(sp.OMPBefore(mask_gradients=True), grads, inner=inner)
    trace = lambda s: np.asarray(sp.get_sparse_state(s).inner_state[0].trace["w"])  # noqa: E731
    np.testing.assert_array_equal(trace(dense_moments), [[1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(trace(masked), [[1.0, 1.0, 0.0, 0.0]])


def test_reset_moments_zeroes_adam_moments_of_regrown_weights():
    # adam(0.1): p + u = [1.1, -2.1, ...]; drop index 0, grow index 2 (largest |g| among {0, 2, 3})
    grads = {"w": jnp.array([[-0.5, 0.5, 0.9, 0.1]]), "b": jnp.array([0.2])}
    mu = lambda s: np.asarray(sp.get_sparse_state(s).inner_state[0].mu["w"])  # noqa: E731
    _, kept = one_step(rigl(), grads, inner=optax.adam(0.1))
    _, reset = one_step(rigl(reset_moments=True), grads, inner=optax.adam(0.1))
    assert mu(kept)[0, 2] != 0.0
    np.testing.assert_allclose(mu(reset), mu(kept) * np.array([[1, 1, 0, 1]]))
    np.testing.assert_allclose(np.asarray(sp.get_sparse_state(reset).inner_state[0].mu["b"]), [0.02])


def test_dense_passes_the_inner_updates_through():
    grads = {"w": jnp.array([[1.0, 2.0, 3.0, 4.0]]), "b": jnp.array([1.0])}
    new, _ = one_step(sp.Dense(), grads)
    np.testing.assert_array_equal(np.asarray(new["w"]), [[0.0, -4.0, -3.0, -4.0]])


def test_get_masks_inside_a_chain_and_errors():
    opt = optax.chain(optax.clip_by_global_norm(1.0), sp.sparse_optimizer(optax.adam(1e-3), "omp_before", M, 10))
    state = opt.init(P)
    np.testing.assert_array_equal(np.asarray(sp.get_masks(state)["w"]), np.asarray(M["w"]))
    with pytest.raises(ValueError, match="found 0"):
        sp.get_masks(optax.adam(1e-3).init(P))
    with pytest.raises(ValueError, match="unknown algorithm 'magnitude'; choose one of"):
        sp.sparse_optimizer(optax.adam(1e-3), "magnitude", M, 10)
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        sp.sparse_optimizer(optax.adam(1e-3), "rigl", M, 0)
    opt = sp.sparse_optimizer(optax.adam(1e-3), "rigl", M, 10)
    with pytest.raises(ValueError, match="needs params"):
        opt.update(P, opt.init(P))
    with pytest.raises(ValueError, match="masks do not match params"):
        opt.init({"w": jnp.ones((2, 2)), "b": jnp.ones(1)})


# ------------------------------------------------------------------------ training an MLP


def mlp_params(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"l1": {"kernel": jax.random.normal(k1, (8, 64)) * 0.3, "bias": jnp.zeros(64)},
            "l2": {"kernel": jax.random.normal(k2, (64, 64)) * 0.1, "bias": jnp.zeros(64)},
            "out": {"kernel": jax.random.normal(k3, (64, 1)) * 0.1, "bias": jnp.zeros(1)}}


def mlp_loss(p, x, y):
    h = jnp.tanh(x @ p["l1"]["kernel"] + p["l1"]["bias"])
    h = jnp.tanh(h @ p["l2"]["kernel"] + p["l2"]["bias"])
    return jnp.mean(((h @ p["out"]["kernel"] + p["out"]["bias"])[:, 0] - y) ** 2)


X = jax.random.normal(jax.random.key(1), (256, 8))
Y = jnp.sin(X[:, 0]) + X[:, 1] * X[:, 2]
STEPS = 300


def train(algorithm, hint=False, steps=STEPS):
    params = mlp_params(jax.random.key(0))
    masks = algorithm.init_masks(params, sp.prunable_masks(params), key=jax.random.key(2),
                                 grads=jax.grad(mlp_loss)(params, X, Y))
    params = sp.apply_masks(params, masks)
    opt = sp.sparse_optimizer(optax.adamw(1e-2), algorithm, masks, steps)
    state = opt.init(params)
    update_steps = set(algorithm.update_steps(steps))

    def step(p, s, **kwargs):
        loss, g = jax.value_and_grad(mlp_loss)(p, X, Y)
        u, s = opt.update(g, s, p, **kwargs)
        return optax.apply_updates(p, u), s, loss

    def hinted_step(flag):
        return jax.jit(lambda p, s: step(p, s, is_update_step=flag))

    hinted = {flag: hinted_step(flag) for flag in (False, True)}
    device_cond_step = jax.jit(step)
    losses = []
    for t in range(1, steps + 1):
        params, state, loss = (hinted[t in update_steps] if hint else device_cond_step)(params, state)
        losses.append(loss)
    return masks, params, state, np.asarray(losses)


N = 8 * 64 + 64 * 64 + 64


@pytest.mark.parametrize("name", list(sp.ALGORITHMS))
def test_every_algorithm_trains_an_mlp_to_its_sparsity(name):
    algorithm = sp.ALGORITHMS[name]
    if name != "dense":
        algorithm = dataclasses.replace(algorithm, sparsity=0.8)
    if algorithm.dynamic:
        algorithm = dataclasses.replace(algorithm, update_frequency=25)
    initial_masks, params, state, losses = train(algorithm)
    masks = sp.get_masks(state)
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])
    n_active = sum(int(m.sum()) for _, m in sp.mask_items(masks))
    if name in ("dense", "lth"):  # lth's round 0 is the dense run
        assert n_active == N
    elif name in ("random_before", "random_after", "rigl"):
        assert abs(n_active / N - 0.2) < 0.03  # Bernoulli(0.2)
    else:
        assert n_active == int(N * 0.2)
    for (path, m), leaf in zip(sp.mask_items(masks), [params["l1"]["kernel"], params["l2"]["kernel"],
                                                      params["out"]["kernel"]]):
        assert not bool(jnp.any(jnp.where(m, False, leaf != 0))), path
    if isinstance(algorithm, sp.RigL):
        for (_, before), (_, after) in zip(sp.mask_items(initial_masks), sp.mask_items(masks)):
            assert int(before.sum()) == int(after.sum())  # per-layer density conserved
        assert any(bool((b != a).any()) for (_, b), (_, a) in zip(sp.mask_items(initial_masks), sp.mask_items(masks)))
        assert float(sp.get_sparse_state(state).algorithm_state["drop_fraction"]) == pytest.approx(0.005)
    if name == "gmp":
        assert float(sp.get_sparse_state(state).algorithm_state["scheduled_sparsity"]) == pytest.approx(0.8)


def test_host_hints_give_the_same_run_as_the_device_cond():
    for algorithm in (sp.RigL(sparsity=0.8, update_frequency=25), sp.GMP(sparsity=0.8, update_frequency=25),
                      sp.RigL(init="snip", sparsity=0.8, update_frequency=40, fairseq_order=True)):
        _, p_cond, s_cond, l_cond = train(algorithm, steps=120)
        _, p_hint, s_hint, l_hint = train(algorithm, hint=True, steps=120)
        np.testing.assert_allclose(l_cond, l_hint, rtol=1e-5, atol=1e-7)
        for (_, a), (_, b) in zip(sp.mask_items(sp.get_masks(s_cond)), sp.mask_items(sp.get_masks(s_hint))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_gmp_masks_shrink_monotonically_to_the_exact_target():
    algorithm = sp.GMP(sparsity=0.9, update_frequency=10)
    params = mlp_params(jax.random.key(0))
    opt = sp.sparse_optimizer(optax.adam(1e-2), algorithm, sp.prunable_masks(params), 100)
    state = opt.init(params)
    step = jax.jit(lambda p, s: (lambda g: (lambda u, s: (optax.apply_updates(p, u), s))(*opt.update(g, s, p)))(
        jax.grad(mlp_loss)(p, X, Y)))
    previous, counts = sp.prunable_masks(params), []
    for t in range(1, 101):
        params, state = step(params, state)
        masks = sp.get_masks(state)
        assert not any(bool((m & ~p).any()) for (_, m), (_, p) in zip(sp.mask_items(masks), sp.mask_items(previous)))
        previous = masks
        counts.append(sum(int(m.sum()) for _, m in sp.mask_items(masks)))
    t0, t1 = algorithm.window(100)
    expected = [int(N * (1 - sp.gmp_sparsity(t, 0.9, t0, t1))) for t in algorithm.update_steps(100)]
    assert [counts[t - 1] for t in algorithm.update_steps(100)] == expected
    assert counts[-1] == int(N * 0.1)
