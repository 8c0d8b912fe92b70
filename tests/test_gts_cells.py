import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from smc_jax.models.tree_decoder import NEG_INF, GenerateNode, Merge, Prediction

B, S, H, E, OPS, G, N = 3, 6, 8, 5, 4, 2, 3


def sig(x):
    return 1 / (1 + np.exp(-x))


def dense(p, x):
    return x @ np.asarray(p["kernel"]) + (np.asarray(p["bias"]) if "bias" in p else 0)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def inputs():
    keys = jax.random.split(jax.random.key(0), 5)
    goal = jax.random.normal(keys[0], (B, H))
    left = jax.random.normal(keys[1], (B, H))
    has_left = jnp.array([False, True, True])
    enc = jax.random.normal(keys[2], (B, S, H))
    seq_mask = jnp.arange(S)[None] < jnp.array([6, 4, 2])[:, None]
    nums = jax.random.normal(keys[3], (B, N, H))
    num_mask = jnp.arange(G + N)[None] < jnp.array([5, 3, 4])[:, None]
    return goal, left, has_left, enc, seq_mask, nums, num_mask


def test_prediction_matches_the_original_formulas():
    goal, left, has_left, enc, seq_mask, nums, num_mask = inputs()
    module = Prediction(H, OPS, G)
    params = nn.meta.unbox(module.init(jax.random.key(1), goal, left, has_left, enc, seq_mask, nums,
                                       num_mask))["params"]
    assert sorted(params) == ["attn", "concat_l", "concat_lg", "concat_r", "concat_rg", "embedding_weight", "ops",
                              "score"]
    assert params["embedding_weight"].shape == (1, G, H) and sorted(params["attn"]) == ["attn", "score"]
    assert "bias" not in params["score"]["score"]
    num_score, op, q, context, num_emb = module.apply({"params": params}, goal, left, has_left, enc, seq_mask, nums,
                                                      num_mask)
    g, l_, enc_, nums_ = (np.asarray(x, np.float64) for x in (goal, left, enc, nums))
    p = params
    for b in range(B):
        if has_left[b]:
            both = np.concatenate([l_[b], g[b]])
            ref_q = np.tanh(dense(p["concat_r"], both)) * sig(dense(p["concat_rg"], both))
        else:
            ref_q = np.tanh(dense(p["concat_l"], g[b])) * sig(dense(p["concat_lg"], g[b]))
        energies = np.array([dense(p["attn"]["score"], np.tanh(dense(p["attn"]["attn"], np.concatenate([ref_q, h]))))[0]
                             for h in enc_[b]])
        weights = softmax(np.where(np.asarray(seq_mask[b]), energies, NEG_INF))
        ref_context = weights @ enc_[b]
        leaf = np.concatenate([ref_q, ref_context])
        candidates = np.concatenate([np.asarray(p["embedding_weight"][0]), nums_[b]])
        scores = np.array([dense(p["score"]["score"], np.tanh(dense(p["score"]["attn"], np.concatenate([leaf, e]))))[0]
                           for e in candidates])
        np.testing.assert_allclose(np.asarray(q[b]), ref_q, atol=1e-5)
        np.testing.assert_allclose(np.asarray(context[b]), ref_context, atol=1e-5)
        np.testing.assert_allclose(np.asarray(op[b]), dense(p["ops"], leaf), atol=1e-5)
        np.testing.assert_allclose(np.asarray(num_score[b]), np.where(np.asarray(num_mask[b]), scores, NEG_INF),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(num_emb[b]), candidates, atol=1e-6)


def test_generate_node_and_merge_match_the_original_formulas():
    goal, _, _, _, _, _, _ = inputs()
    context = goal[::-1]
    ops = jnp.array([0, 3, 1])
    gen = GenerateNode(H, OPS, E)
    gp = nn.meta.unbox(gen.init(jax.random.key(2), goal, ops, context))["params"]
    assert sorted(gp) == ["embeddings", "generate_l", "generate_lg", "generate_r", "generate_rg"]
    left, right, label = gen.apply({"params": gp}, goal, ops, context)
    x = np.concatenate([np.asarray(goal), np.asarray(context), np.asarray(gp["embeddings"])[np.asarray(ops)]], axis=1)
    np.testing.assert_allclose(np.asarray(left), np.tanh(dense(gp["generate_l"], x)) * sig(dense(gp["generate_lg"], x)),
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(right),
                               np.tanh(dense(gp["generate_r"], x)) * sig(dense(gp["generate_rg"], x)), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(label), np.asarray(gp["embeddings"])[np.asarray(ops)])

    merge = Merge(H)
    mp = nn.meta.unbox(merge.init(jax.random.key(3), label, left, right))["params"]
    assert sorted(mp) == ["merge", "merge_g"] and mp["merge"]["kernel"].shape == (E + 2 * H, H)
    out = merge.apply({"params": mp}, label, left, right)
    y = np.concatenate([np.asarray(label), np.asarray(left), np.asarray(right)], axis=1)
    np.testing.assert_allclose(np.asarray(out), np.tanh(dense(mp["merge"], y)) * sig(dense(mp["merge_g"], y)),
                               atol=1e-5)


def test_dropout_is_active_only_when_not_deterministic():
    goal, left, has_left, enc, seq_mask, nums, num_mask = inputs()
    module = Prediction(H, OPS, G, dropout=0.5)
    params = nn.meta.unbox(module.init(jax.random.key(1), goal, left, has_left, enc, seq_mask, nums,
                                       num_mask))["params"]
    args = (goal, left, has_left, enc, seq_mask, nums, num_mask)
    eval_a = module.apply({"params": params}, *args)[1]
    eval_b = module.apply({"params": params}, *args, deterministic=True)[1]
    train = module.apply({"params": params}, *args, deterministic=False, rngs={"dropout": jax.random.key(5)})[1]
    np.testing.assert_array_equal(np.asarray(eval_a), np.asarray(eval_b))
    assert not np.allclose(np.asarray(train), np.asarray(eval_a))
