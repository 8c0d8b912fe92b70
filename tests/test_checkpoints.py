"""RunCheckpoints: exact round trips of a sparse train state, retention, best tracking, crash leftovers."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from smc_jax import sparsity
from smc_jax.train.checkpoints import RunCheckpoints


@pytest.fixture(scope="module")
def state():
    """A RigL + per-label Adam train state after two steps (non-zero moments, None masks on the bias)."""
    params = {
        "dense": {"kernel": jnp.arange(12.0).reshape(3, 4) / 7, "bias": jnp.linspace(-1, 1, 4)},
        "conv": {"w": jnp.arange(24.0).reshape(2, 3, 4) / 5 - 2},
    }
    algorithm = sparsity.RigL(sparsity=0.5, update_frequency=1)
    masks = algorithm.init_masks(params, sparsity.prunable_masks(params), key=jax.random.key(0))
    labels = jax.tree_util.tree_map_with_path(lambda path, _: "b" if path[-1].key == "bias" else "a", params)
    inner = optax.multi_transform({"a": optax.adam(1e-3), "b": optax.adam(1e-4)}, labels)
    opt = sparsity.sparse_optimizer(inner, algorithm, masks, total_steps=10)
    opt_state, update = opt.init(params), jax.jit(opt.update)
    for i in range(2):
        grads = jax.tree.map(lambda p: jnp.sin(p * (i + 1)), params)
        updates, opt_state = update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    return {"step": jnp.int32(2), "params": params, "opt_state": opt_state,
            "rng": jax.random.key_data(jax.random.key(1))}


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_concrete_and_abstract(tmp_path, state):
    meta = {"data": {"epoch": 1, "batch": 7}, "best": {"score": 0.25, "step": 2}, "history": [[1, 0.5], [2, 0.25]]}
    ckpt = RunCheckpoints(tmp_path / "run" / "checkpoints")  # parents created
    ckpt.save(2, state, meta)
    ckpt.wait()
    assert ckpt.latest_step() == 2
    for like in (state, jax.eval_shape(lambda: state)):
        restored, got_meta = ckpt.restore(like)
        _assert_same(restored, state)
        assert got_meta == meta
        masks = sparsity.get_masks(restored["opt_state"])
        assert masks["dense"]["bias"] is None and masks["dense"]["kernel"].dtype == jnp.bool_
        assert isinstance(sparsity.get_sparse_state(restored["opt_state"]), sparsity.SparseState)
        assert restored["step"].dtype == jnp.int32 and restored["rng"].dtype == jnp.uint32
        adam = restored["opt_state"].inner_state.inner_states["a"].inner_state[0]
        assert isinstance(adam, optax.ScaleByAdamState) and np.any(np.asarray(adam.mu["dense"]["kernel"]) != 0)
    assert not np.all(np.asarray(masks["dense"]["kernel"]))  # RigL masks, not the all-True defaults
    ckpt.close()


def test_keep_newest_and_skip_existing_step(tmp_path, state):
    ckpt = RunCheckpoints(tmp_path)
    for step in (1, 2, 3):
        ckpt.save(step, state, {"step": step})
    ckpt.save(3, state, {"step": "again"})  # an existing step is skipped
    ckpt.wait()
    assert ckpt.latest_step() == 3
    assert [d for d in os.listdir(tmp_path / "latest") if d.isdigit()] == ["3"]
    assert ckpt.restore(state)[1] == {"step": 3}
    assert ckpt.best_step() is None and ckpt.restore_best(state) is None
    ckpt.close()


def test_best_is_independent_of_latest(tmp_path, state):
    later = {**state, "params": jax.tree.map(lambda p: p + 1, state["params"])}
    ckpt = RunCheckpoints(tmp_path, keep=2)
    best = lambda s: {"params": s["params"], "masks": sparsity.get_masks(s["opt_state"])}  # noqa: E731
    ckpt.save_best(1, best(state), {"score": 0.5})
    ckpt.save(2, state, {})
    ckpt.save_best(3, best(later), {"score": 0.7})
    ckpt.wait()
    assert ckpt.best_step() == 3 and ckpt.latest_step() == 2
    tree, meta = ckpt.restore_best(jax.eval_shape(lambda: best(state)))
    _assert_same(tree, best(later))
    assert meta == {"score": 0.7}
    assert [d for d in os.listdir(tmp_path / "best") if d.isdigit()] == ["3"]
    _assert_same(ckpt.restore(state)[0], state)
    # A run resumed from an earlier point that finds a best before step 3 replaces the stale step 3.
    ckpt.save_best(2, best(state), {"score": 0.6})
    ckpt.wait()
    assert ckpt.best_step() == 2 and ckpt.restore_best(best(state))[1] == {"score": 0.6}
    ckpt.close()


def test_empty_directory(tmp_path, state):
    ckpt = RunCheckpoints(tmp_path / "fresh")
    assert ckpt.latest_step() is None and ckpt.best_step() is None
    assert ckpt.restore(state) is None and ckpt.restore_best(state) is None
    ckpt.close()


def test_uncommitted_save_is_ignored(tmp_path, state):
    ckpt = RunCheckpoints(tmp_path)
    ckpt.save(3, state, {"step": 3})
    ckpt.close()
    # What a process killed mid-save leaves: a partly written temporary step directory.
    for name in ("5.orbax-checkpoint-tmp", "6.orbax-checkpoint-tmp-1712345678"):
        partial = tmp_path / "latest" / name / "state"
        partial.mkdir(parents=True)
        (partial / "_METADATA").write_text("{")
    ckpt = RunCheckpoints(tmp_path)
    assert ckpt.latest_step() == 3
    restored, meta = ckpt.restore(state)
    assert meta == {"step": 3}
    _assert_same(restored, state)
    ckpt.save(5, state, {"step": 5})  # the leftover of step 5 is replaced
    ckpt.wait()
    assert ckpt.latest_step() == 5 and ckpt.restore(state)[1] == {"step": 5}
    ckpt.close()


@pytest.mark.parametrize("change", ["extra_leaf", "shape", "dtype", "none_leaf"])
def test_mismatched_like_raises(tmp_path, state, change):
    ckpt = RunCheckpoints(tmp_path)
    ckpt.save(2, state, {"step": 2})
    ckpt.wait()
    if change == "extra_leaf":
        like = {**state, "params": {**state["params"], "head": {"kernel": jnp.ones((4, 2))}}}
    elif change == "shape":
        like = {**state, "params": {**state["params"], "conv": {"w": jnp.zeros((2, 3, 5))}}}
    elif change == "dtype":
        like = {**state, "params": jax.tree.map(lambda p: p.astype(jnp.bfloat16), state["params"])}
    else:  # a mask that was None (non-prunable) is now an array
        sparse = sparsity.get_sparse_state(state["opt_state"])
        masks = {**sparse.masks, "dense": {**sparse.masks["dense"], "bias": jnp.ones(4, bool)}}
        like = {**state, "opt_state": sparse._replace(masks=masks)}
    with pytest.raises(ValueError, match="belongs to another model/config") as info:
        ckpt.restore(like)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "latest") in message
    assert ckpt.latest_step() == 2 and ckpt.restore(state)[1] == {"step": 2}  # nothing lost
    ckpt.close()


def test_restore_keeps_named_sharding(tmp_path, state):
    mesh = jax.make_mesh((1,), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    sharded = jax.device_put(state, replicated)
    ckpt = RunCheckpoints(tmp_path)
    ckpt.save(2, sharded, {})
    restored, _ = ckpt.restore(sharded)
    _assert_same(restored, state)
    assert all(leaf.sharding == replicated for leaf in jax.tree.leaves(restored))
    abstract, _ = ckpt.restore(jax.eval_shape(lambda: state))  # no shardings: one local device
    assert all(leaf.sharding.device_set == {jax.local_devices()[0]} for leaf in jax.tree.leaves(abstract))
    ckpt.close()
