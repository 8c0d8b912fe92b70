import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from smc_jax.models.gts import GTS
from smc_jax.models.tree_decoder import GenerateNode, Merge, Prediction, make_loss, masked_cross_entropy
from smc_jax.models.tree_schedule import batch_schedule

OPS, G, N, H, E = 4, 2, 3, 8, 6
UNK = OPS + G + N
# "* + N0 N1 N2", "- N1 c0" (c0: generate number 0), "/ N0 UNK" with UNK in {N1, N2}, "N2"
TARGETS = [[2, 0, 6, 7, 8], [1, 7, 4], [3, 6, UNK], [8]]
UNK_CANDIDATES = {(2, 2): [1, 2]}  # (example, step) -> candidate numbers


def make_batch():
    length = max(map(len, TARGETS))
    schedule = batch_schedule(TARGETS, OPS, length)
    targets = np.zeros((len(TARGETS), length), np.int32)
    candidates = np.zeros((len(TARGETS), length, G + N), bool)
    for b, t in enumerate(TARGETS):
        targets[b, : len(t)] = t
    for (b, t), numbers in UNK_CANDIDATES.items():
        candidates[b, t, [G + i for i in numbers]] = True
    return dict(
        input_ids=jnp.array([[3, 1, 4, 1, 5, 1, 9], [3, 1, 2, 1, 0, 0, 0], [7, 1, 8, 1, 1, 2, 0],
                             [1, 5, 1, 6, 1, 0, 0]]),
        lengths=jnp.array([7, 4, 6, 5]),
        num_pos=jnp.array([[1, 3, 5], [1, 3, 0], [1, 3, 4], [0, 2, 4]]),
        num_count=jnp.array([3, 2, 3, 3]),
        targets=jnp.asarray(targets),
        target_lengths=jnp.array([len(t) for t in TARGETS]),
        node_slot=jnp.asarray(schedule.node_slot), left_step=jnp.asarray(schedule.left_step),
        merge_op=jnp.asarray(schedule.merge_op), merge_sub=jnp.asarray(schedule.merge_sub),
        unk_candidates=jnp.asarray(candidates),
    )


def model():
    return GTS(vocab_size=10, num_ops=OPS, num_generate=G, unk_id=UNK, hidden=H, embedding_size=E)


@functools.lru_cache(maxsize=None)
def reference_cells(m):
    """The reference's calls, jitted once per model (every example of a batch has the same padded shapes): the
    model's ``encode_batch`` (any encoder) and the three cells."""
    return (jax.jit(lambda p, one: m.apply({"params": p}, one, method="encode_batch")),
            jax.jit(lambda p, *a: Prediction(H, OPS, G).apply({"params": p}, *a)),
            jax.jit(lambda p, *a: GenerateNode(H, OPS, E).apply({"params": p}, *a)),
            jax.jit(lambda p, *a: Merge(H).apply({"params": p}, *a)))


def reference_logits(m, params, batch, b):
    """The original train_tree loop for one example (its row of the padded batch): Python stacks, one cell call
    per step, on ``m.encode_batch``'s outputs (GTS's or Graph2Tree's encoder)."""
    one = {k: v[b:b + 1] for k, v in batch.items()}
    encode, predict, generate, merge = reference_cells(m)
    enc, problem = encode(params, one)
    dec = params["decoder"]
    num_enc = enc[:, one["num_pos"][0]]
    num_mask = jnp.arange(G + N)[None] < G + one["num_count"][:, None]
    seq_mask = jnp.arange(enc.shape[1])[None] < one["lengths"][:, None]
    node_stack, subtrees, left, logits = [problem], [], None, []
    for t in range(int(one["target_lengths"][0])):
        has_left = jnp.array([left is not None])
        num_score, op, q, context, num_emb = predict(
            dec["predict"], node_stack[-1], left if left is not None else jnp.zeros((1, H)), has_left,
            enc, seq_mask, num_enc, num_mask)
        logits.append(jnp.concatenate([op, num_score], axis=-1)[0])
        target = int(one["targets"][0, t])
        if target == UNK:
            candidates = [G + i for i in UNK_CANDIDATES[(b, t)]]
            target = OPS + max(candidates, key=lambda c: float(num_score[0, c]))
        left_goal, right_goal, label = generate(dec["generate"], q, jnp.array([target if target < OPS else 0]),
                                                context)
        node_stack.pop()
        if target < OPS:
            node_stack += [right_goal, left_goal]
            subtrees.append((label, False))
        else:
            current = num_emb[:, target - OPS]
            while subtrees and subtrees[-1][1]:
                sub = subtrees.pop()[0]
                op_embedding = subtrees.pop()[0]
                current = merge(dec["merge"], op_embedding, sub, current)
            subtrees.append((current, True))
        left = subtrees[-1][0] if subtrees and subtrees[-1][1] else None
    return jnp.stack(logits)


def test_batched_teacher_forcing_equals_the_step_by_step_reference():
    batch = make_batch()
    m = model()
    params = nn.meta.unbox(m.init(jax.random.key(0), batch))["params"]
    logits, targets, _ = jax.jit(lambda p, b: m.apply({"params": p}, b, method=GTS.teacher_forced))(params, batch)
    for b, target in enumerate(TARGETS):
        expected = reference_logits(m, params, batch, b)
        np.testing.assert_allclose(np.asarray(logits[b, : len(target)]), np.asarray(expected), rtol=1e-4, atol=1e-4)
    resolved = int(targets[2, 2])
    assert resolved in (OPS + G + 1, OPS + G + 2)
    assert int(jnp.argmax(jnp.where(batch["unk_candidates"][2, 2], logits[2, 2, OPS:], -jnp.inf))) + OPS == resolved
    loss = m.apply({"params": params}, batch)
    lengths = batch["target_lengths"]
    manual = -sum(float(jax.nn.log_softmax(logits[b, t])[targets[b, t]])
                  for b in range(4) for t in range(int(lengths[b])))
    np.testing.assert_allclose(float(loss), manual / int(lengths.sum()), rtol=1e-5)


def test_padding_never_changes_an_example():
    batch = make_batch()
    m = model()
    params = nn.meta.unbox(m.init(jax.random.key(0), batch))["params"]
    declared = nn.meta.unbox(m.init(jax.random.key(0), batch, method="declare"))["params"]  # the tasks' cheap init
    for a, b in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree_util.tree_flatten_with_path(declared)[0]):
        assert a[0] == b[0] and np.array_equal(np.asarray(a[1]), np.asarray(b[1]))
    full, _, _ = m.apply({"params": params}, batch, method=GTS.teacher_forced)
    alone = {k: v[1:2] for k, v in batch.items()}
    alone = {**alone, "input_ids": alone["input_ids"][:, :4], "targets": alone["targets"][:, :3],
             "node_slot": alone["node_slot"][:, :3], "left_step": alone["left_step"][:, :3],
             "merge_op": alone["merge_op"][:, :3], "merge_sub": alone["merge_sub"][:, :3],
             "unk_candidates": alone["unk_candidates"][:, :3, :G + 2], "num_pos": alone["num_pos"][:, :2]}
    single, _, _ = m.apply({"params": params}, alone, method=GTS.teacher_forced)
    np.testing.assert_allclose(np.asarray(single[0, :, :OPS + G + 2]), np.asarray(full[1, :3, :OPS + G + 2]),
                               rtol=1e-5, atol=1e-5)


def test_loss_trains():
    batch = make_batch()
    m = model()
    params = nn.meta.unbox(m.init(jax.random.key(0), batch))["params"]
    loss_fn = jax.jit(lambda p, key: m.apply({"params": p}, batch, deterministic=False, rngs={"dropout": key}))
    loss = jax.jit(lambda p: m.apply({"params": p}, batch))
    opt = optax.adam(1e-2)

    @jax.jit
    def step(p, state):
        grads = jax.grad(lambda q: m.apply({"params": q}, batch))(p)
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), state, grads

    first, state = float(loss(params)), opt.init(params)
    for i in range(100):
        params, state, grads = step(params, state)
        if i == 0:
            assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
            assert float(jnp.abs(grads["embedding"]["embedding"][0]).sum()) == 0.0  # padding row gets no gradient
    assert float(loss(params)) < 0.5 * first
    assert np.isfinite(float(loss_fn(params, jax.random.key(1))))


def test_masked_cross_entropy_divides_by_the_total_length():
    logits = jnp.log(jnp.array([[[0.5, 0.5], [0.25, 0.75]], [[0.9, 0.1], [0.3, 0.7]]]))
    targets = jnp.array([[0, 1], [1, 0]])
    loss = masked_cross_entropy(logits, targets, jnp.array([2, 1]))
    np.testing.assert_allclose(float(loss), -(np.log(0.5) + np.log(0.75) + np.log(0.1)) / 3, rtol=1e-6)


def check_loss_gradients_equal_autodiff(m, params, batch, key):
    """make_loss(m)'s value and gradients equal autodiff of ``m.apply`` (dropout on when ``key`` is given);
    returns make_loss's ``(value, gradients)``."""
    rngs = {"dropout": key} if key is not None else {}
    reference = jax.jit(jax.value_and_grad(
        lambda p: m.apply({"params": p}, batch, deterministic=key is None, rngs=rngs)))(params)
    fast = jax.jit(jax.value_and_grad(lambda p: make_loss(m)(p, batch, key)))(params)
    np.testing.assert_allclose(float(fast[0]), float(reference[0]), rtol=1e-6)
    flat_ref = dict(jax.tree_util.tree_flatten_with_path(reference[1])[0])
    for path, g in jax.tree_util.tree_flatten_with_path(fast[1])[0]:
        np.testing.assert_allclose(np.asarray(g), np.asarray(flat_ref[path]), rtol=2e-4, atol=1e-6,
                                   err_msg=jax.tree_util.keystr(path))
    return fast


@pytest.mark.parametrize("dropout", [False, True])
def test_deferred_weight_gradients_equal_autodiff(dropout):
    """make_loss's custom gradient (decoder kernels' gradients as one matmul after the scan) is autodiff's."""
    batch = make_batch()
    m = model()
    params = nn.meta.unbox(m.init(jax.random.key(0), batch))["params"]
    key = jax.random.key(3) if dropout else None
    fast = check_loss_gradients_equal_autodiff(m, params, batch, key)
    assert float(jnp.abs(fast[1]["decoder"]["generate"]["generate_l"]["kernel"]).sum()) > 0
