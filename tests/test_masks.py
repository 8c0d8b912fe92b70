import jax.numpy as jnp
import numpy as np
import pytest

import smc_jax.sparsity as sp


def tree():
    return {
        "enc": {
            "dense": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(3)},
            "conv": {"kernel": jnp.ones((3, 3, 2, 4))},
            "emb3d": jnp.ones((1, 2, 3)),
        },
        "layers": [{"kernel": jnp.ones((2, 2))}, {"kernel": jnp.ones((2, 2))}],
        "pooler": {"kernel": jnp.ones((3, 3))},
    }


def prunable_paths(masks):
    return [path for path, _ in sp.mask_items(masks)]


def test_prunable_masks_default_rule_is_ndim_at_least_two():
    masks = sp.prunable_masks(tree())
    assert prunable_paths(masks) == [
        "enc/conv/kernel", "enc/dense/kernel", "enc/emb3d", "layers/0/kernel", "layers/1/kernel", "pooler/kernel",
    ]
    assert masks["enc"]["dense"]["bias"] is None
    assert masks["enc"]["dense"]["kernel"].dtype == jnp.bool_
    assert bool(masks["enc"]["dense"]["kernel"].all())


def test_prunable_masks_include_exclude_fullmatch_and_min_ndim():
    masks = sp.prunable_masks(tree(), include=[r"enc/.*", r"layers/\d+/kernel"], exclude=[r".*emb3d", r".*conv.*"])
    assert prunable_paths(masks) == ["enc/dense/kernel", "layers/0/kernel", "layers/1/kernel"]
    # fullmatch: 'pooler' alone does not match 'pooler/kernel'
    assert prunable_paths(sp.prunable_masks(tree(), include="pooler")) == []
    assert prunable_paths(sp.prunable_masks(tree(), include="pooler/kernel")) == ["pooler/kernel"]
    assert "enc/dense/bias" in prunable_paths(sp.prunable_masks(tree(), min_ndim=1))
    assert prunable_paths(sp.prunable_masks(tree(), min_ndim=4)) == ["enc/conv/kernel"]


def test_bad_regex_is_a_value_error():
    with pytest.raises(ValueError, match="invalid exclude regex"):
        sp.prunable_masks(tree(), exclude=["(unclosed"])


def test_apply_masks_zeroes_masked_out_weights_and_leaves_none_untouched():
    params = tree()
    masks = sp.prunable_masks(params)
    masks["enc"]["dense"]["kernel"] = jnp.array([[True, False, True], [False, True, False]])
    out = sp.apply_masks(params, masks)
    np.testing.assert_array_equal(out["enc"]["dense"]["kernel"], [[0.0, 0.0, 2.0], [0.0, 4.0, 0.0]])
    np.testing.assert_array_equal(out["enc"]["dense"]["bias"], np.ones(3))
    # idempotent
    again = sp.apply_masks(out, masks)
    np.testing.assert_array_equal(again["enc"]["dense"]["kernel"], out["enc"]["dense"]["kernel"])


def test_masks_not_matching_params_are_rejected_with_the_leaf_named():
    params = tree()
    masks = sp.prunable_masks(params)
    masks["pooler"]["kernel"] = jnp.ones((3, 4), bool)
    with pytest.raises(ValueError, match=r"'pooler/kernel' has mask shape \(3, 4\) but params shape \(3, 3\)"):
        sp.apply_masks(params, masks)
    masks = sp.prunable_masks(params)
    del masks["pooler"]
    with pytest.raises(ValueError, match="masks do not match params.*pooler/kernel"):
        sp.apply_masks(params, masks)
    masks = sp.prunable_masks(params)
    masks["pooler"]["kernel"] = jnp.ones((3, 3), jnp.float32)
    with pytest.raises(ValueError, match="must be bool"):
        sp.apply_masks(params, masks)


def test_counts_and_sparsity_report():
    params = {"a": jnp.ones((2, 4)), "b": jnp.ones((2, 2)), "c": jnp.ones(5)}
    masks = sp.prunable_masks(params)
    masks["a"] = jnp.array([[True, False, False, False], [True, True, False, False]])
    assert sp.num_prunable(masks) == 12
    assert float(sp.num_active(masks)) == 7.0
    assert sp.mask_shapes(masks) == {"a": (2, 4), "b": (2, 2)}
    report = sp.sparsity_report(masks)
    assert report["per_leaf"] == {"a": 0.625, "b": 0.0}
    assert report["global"] == pytest.approx(5 / 12)
