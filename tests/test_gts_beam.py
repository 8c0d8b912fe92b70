"""GTS.beam_search against a step-by-step Python transliteration of the original ``evaluate_tree``. The helpers take
a model ``kind`` (``'gts'``, ``'graph2tree'``): tests/test_graph2tree.py runs the same checks on Graph2Tree."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from smc_jax.models.graph2tree import Graph2Tree
from smc_jax.models.gts import GTS
from smc_jax.models.tree_decoder import GenerateNode, Merge, Prediction
from smc_jax.models.tree_schedule import batch_schedule
from smc_jax.tasks.arithmetic import graphs

OPS, G, H, E, VOCAB = 4, 2, 8, 6, 12
TRAIN_STEPS = 30
OPTIMIZER = optax.adam(2e-2)
# (sentence length, number count) of the test problems
PROBLEMS = [(7, 3), (4, 1), (9, 4), (5, 2), (6, 3), (3, 2), (8, 1)]


def model(kind="gts"):
    cls = Graph2Tree if kind == "graph2tree" else GTS
    return cls(vocab_size=VOCAB, num_ops=OPS, num_generate=G, unk_id=OPS + G + 4, hidden=H, embedding_size=E)


@functools.lru_cache(maxsize=None)
def cells(kind="gts"):
    """Jitted single-example cell calls on raw param dicts (cached so shapes compile once)."""
    predict = jax.jit(lambda p, *a: Prediction(H, OPS, G).apply({"params": p}, *a))
    generate = jax.jit(lambda p, *a: GenerateNode(H, OPS, E).apply({"params": p}, *a))
    merge = jax.jit(lambda p, *a: Merge(H).apply({"params": p}, *a))
    encode = jax.jit(lambda p, one: model(kind).apply({"params": p}, one, method="encode_batch"))
    return predict, generate, merge, encode


def make_batch(seed, problems=PROBLEMS, kind="gts"):
    """Random problems; for Graph2Tree with their graphs, from random quantity cells and number values (small
    integers, so equal numbers occur)."""
    rng = np.random.default_rng(seed)
    s_max, n_max = max(p[0] for p in problems), max(p[1] for p in problems)
    ids = np.zeros((len(problems), s_max), np.int32)
    num_pos = np.zeros((len(problems), n_max), np.int32)
    for b, (length, count) in enumerate(problems):
        ids[b, :length] = rng.integers(2, VOCAB, length)
        pos = np.sort(rng.choice(length, count, replace=False))
        ids[b, pos] = 1  # NUM
        num_pos[b, :count] = pos
    batch = dict(input_ids=jnp.asarray(ids), lengths=jnp.array([p[0] for p in problems], jnp.int32),
                 num_pos=jnp.asarray(num_pos), num_count=jnp.array([p[1] for p in problems], jnp.int32))
    if kind == "graph2tree":
        edges = [graphs.graph_edges(graphs.example_graphs(ids[b, :length], num_pos[b, :count],
                                                          rng.integers(0, length + 2, 4), rng.integers(1, 4, count)))
                 for b, (length, count) in enumerate(problems)]
        batch["graph"] = jnp.asarray(graphs.batch_graphs(edges, s_max))
    return batch


# a target prefix tree per problem (N_i = OPS + G + i, generate numbers c0, c1 = OPS, OPS + 1) to train towards
TARGETS = [[2, 0, 6, 7, 8], [1, 6, 4], [0, 2, 6, 7, 3, 8, 9], [3, 7, 6], [1, 8, 0, 6, 5], [7], [2, 4, 6]]


def training_batch(seed, kind="gts"):
    length = max(map(len, TARGETS))
    schedule = batch_schedule(TARGETS, OPS, length)
    targets = np.zeros((len(TARGETS), length), np.int32)
    for b, t in enumerate(TARGETS):
        targets[b, :len(t)] = t
    n = max(p[1] for p in PROBLEMS)
    return dict(make_batch(seed, kind=kind), targets=jnp.asarray(targets),
                target_lengths=jnp.array([len(t) for t in TARGETS]),
                node_slot=jnp.asarray(schedule.node_slot), left_step=jnp.asarray(schedule.left_step),
                merge_op=jnp.asarray(schedule.merge_op), merge_sub=jnp.asarray(schedule.merge_sub),
                unk_candidates=jnp.zeros((len(TARGETS), length, G + n), bool))


@functools.partial(jax.jit, static_argnums=2)
def initialize(key, batch, kind="gts"):
    return nn.meta.unbox(model(kind).init(key, batch, method="teacher_forced"))["params"]


@functools.partial(jax.jit, static_argnums=3)
def train_step(params, state, batch, kind="gts"):
    """One Adam step on the decoder only (the encoder stays random)."""
    loss = lambda dec: model(kind).apply({"params": {**params, "decoder": dec}}, batch)  # noqa: E731
    updates, state = OPTIMIZER.update(jax.grad(loss)(params["decoder"]), state, params["decoder"])
    return {**params, "decoder": optax.apply_updates(params["decoder"], updates)}, state


@functools.lru_cache(maxsize=None)
def init_params(seed, train_steps=0, kind="gts"):
    """A random tiny model, optionally trained a little towards TARGETS (random ones decode mostly single
    numbers, or operators forever)."""
    batch = training_batch(seed, kind)
    params = initialize(jax.random.key(seed), batch, kind)
    state = OPTIMIZER.init(params["decoder"])
    for _ in range(train_steps):
        params, state = train_step(params, state, batch, kind)
    return params


def problem(batch, b):
    """Example b alone, unpadded (the original evaluates one problem at a time)."""
    length, count = int(batch["lengths"][b]), int(batch["num_count"][b])
    one = dict(input_ids=batch["input_ids"][b:b + 1, :length], lengths=batch["lengths"][b:b + 1],
               num_pos=batch["num_pos"][b:b + 1, :count], num_count=batch["num_count"][b:b + 1])
    if "graph" in batch:
        one["graph"] = batch["graph"][b:b + 1, :, :length, :length]
    return one


def expand(params, enc, num_enc, num_mask, seq_mask, beam, token_scores):
    """Apply each chosen token to a copy of the beam, like evaluate_tree's inner loop."""
    predict, generate, merge, _ = cells()
    dec = params["decoder"]
    score, nodes, trees, left, out = beam
    has_left = jnp.array([left is not None])
    num_score, op, q, context, num_emb = predict(
        dec["predict"], nodes[-1], left if left is not None else jnp.zeros((1, H)), has_left, enc, seq_mask,
        num_enc, num_mask)
    log_probs = jax.nn.log_softmax(jnp.concatenate([op, num_score], axis=-1), axis=-1)[0]
    children = []
    for tv, token in token_scores(log_probs):
        node_stack, tree_stack = list(nodes), list(trees)
        node_stack.pop()
        if token < OPS:
            left_goal, right_goal, label = generate(dec["generate"], q, jnp.array([token]), context)
            node_stack += [right_goal, left_goal]
            tree_stack.append((label, False))
        else:
            current = num_emb[:, token - OPS]
            while tree_stack and tree_stack[-1][1]:
                sub = tree_stack.pop()[0]
                op_embedding = tree_stack.pop()[0]
                current = merge(dec["merge"], op_embedding, sub, current)
            tree_stack.append((current, True))
        new_left = tree_stack[-1][0] if tree_stack and tree_stack[-1][1] else None
        children.append((score + tv, node_stack, tree_stack, new_left, out + [token]))
    return children


def reference_decode(params, one, beam_size, max_length, greedy=False, kind="gts"):
    """evaluate_tree for one problem with Python stacks; greedy: argmax each step (one beam)."""
    *_, encode = cells(kind)
    enc, problem_vec = encode(params, one)
    num_enc = enc[:, one["num_pos"][0]]
    num_mask = jnp.ones((1, G + int(one["num_count"][0])), bool)
    seq_mask = jnp.ones(one["input_ids"].shape, bool)

    def top(log_probs):
        values = np.asarray(log_probs, np.float64)
        order = [int(np.argmax(values))] if greedy else [int(i) for i in jax.lax.top_k(log_probs, beam_size)[1]]
        return [(float(values[i]), i) for i in order]

    beams = [(0.0, [problem_vec], [], None, [])]
    for _ in range(max_length):
        current = []
        while beams:
            b = beams.pop()
            if not b[1]:
                current.append(b)
                continue
            current += expand(params, enc, num_enc, num_mask, seq_mask, b, top)
        beams = sorted(current, key=lambda x: x[0], reverse=True)[:beam_size]
        if all(not b[1] for b in beams):
            break
    return beams[0][4], beams[0][0]


@functools.lru_cache(maxsize=None)
def decoder(beam_size, max_length, kind="gts"):
    return jax.jit(lambda p, batch: model(kind).apply({"params": p}, batch, beam_size=beam_size,
                                                      max_length=max_length, method="beam_search"))


def check_against_reference(params, batch, beam_size, max_length, greedy=False, kind="gts"):
    out = decoder(beam_size, max_length, kind)(params, batch)
    finished_early = 0
    for b in range(batch["input_ids"].shape[0]):
        tokens, score = reference_decode(params, problem(batch, b), beam_size, max_length, greedy, kind)
        length = int(out["length"][b])
        assert np.asarray(out["tokens"][b, :length]).tolist() == tokens, b
        assert np.all(np.asarray(out["tokens"][b, length:]) == -1)
        np.testing.assert_allclose(float(out["score"][b]), score, atol=1e-4)
        finished_early += length < max_length
    assert finished_early > 0
    return out


def test_beam_search_equals_the_python_reference():
    for seed in range(2):
        params, batch = init_params(seed, TRAIN_STEPS), make_batch(seed + 10)
        for beam_size in (5, 3):
            out = check_against_reference(params, batch, beam_size, max_length=20)
            assert out["tokens"].shape == (len(PROBLEMS), 20) and out["tokens"].dtype == jnp.int32
            assert int(out["steps"][0]) <= 20 and int(out["length"].max()) >= 5  # trees with merges


def test_beam_size_one_is_greedy():
    for seed in range(3):
        check_against_reference(init_params(seed, TRAIN_STEPS), make_batch(seed + 20), 1, max_length=20, greedy=True)


def test_padding_never_changes_a_problem():
    params, batch = init_params(1, TRAIN_STEPS), make_batch(30)
    together = decoder(5, 20)(params, batch)
    for b in (2, 5):
        alone = decoder(5, 20)(params, problem(batch, b))
        np.testing.assert_array_equal(np.asarray(alone["tokens"][0]), np.asarray(together["tokens"][b]))
        np.testing.assert_allclose(float(alone["score"][0]), float(together["score"][b]), atol=1e-5)


def test_max_length_cap_and_early_exit():
    params, batch = init_params(0), make_batch(40)
    ops_only = jax.tree.map(lambda x: x, params)
    bias = params["decoder"]["predict"]["ops"]["bias"]
    ops_only["decoder"]["predict"]["ops"]["bias"] = bias + 100.0
    out = decoder(5, 12)(ops_only, batch)
    assert np.all(np.asarray(out["length"]) == 12) and np.all(np.asarray(out["tokens"]) < OPS)
    assert np.all(np.asarray(out["tokens"]) >= 0) and int(out["steps"][0]) == 12

    numbers_only = jax.tree.map(lambda x: x, params)
    numbers_only["decoder"]["predict"]["ops"]["bias"] = bias - 100.0
    out = decoder(3, 12)(numbers_only, batch)  # every tree is one number: all beams finish at the first step
    assert np.all(np.asarray(out["length"]) == 1) and int(out["steps"][0]) == 1
    assert np.all(np.asarray(out["tokens"][:, 0]) >= OPS)
    assert np.all(np.asarray(out["tokens"][:, 0]) < OPS + G + np.asarray(batch["num_count"]))
    assert np.all(np.asarray(out["tokens"][:, 1:]) == -1)

    params = init_params(0, TRAIN_STEPS)  # stops once every beam of every problem is finished
    out = decoder(5, 20)(params, batch)
    assert int(out["length"].max()) <= int(out["steps"][0]) < 20
    assert int(decoder(5, 30)(params, batch)["steps"][0]) == int(out["steps"][0])
