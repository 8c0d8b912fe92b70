"""Graph2Tree (smc_jax.models.graph2tree): the graph module against its formula written out in NumPy (heads,
unbiased-std LayerNorm, residuals; dropout off and on), its parameters and initialisation (identical heads that
diverge after one training step with dropout on), and the whole model against GTS's step-by-step references:
batched teacher forcing and padding invariance, and (``slow``) beam search and make_loss's gradient."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_gts
import test_gts_beam

from smc_jax.models.graph2tree import HEAD_GRAPHS, Graph2Tree, GraphModule, layer_norm
from smc_jax.models.gts import GTS
from smc_jax.models.tree_decoder import masked_cross_entropy
from smc_jax.tasks.arithmetic import graphs
from smc_jax.tasks.arithmetic.batches import real_positions

B, L, H = 3, 6, 8
LENGTHS = (6, 4, 5)


def module_inputs(seed=0):
    """biLSTM-like outputs (0 past each length) and random graphs with self-loops on real tokens only."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, L, H)).astype(np.float32)
    graph = rng.random((B, 2, L, L)) < 0.3
    for b, n in enumerate(LENGTHS):
        x[b, n:] = 0.0
        graph[b, :, n:] = graph[b, :, :, n:] = False
        graph[b, :, np.arange(n), np.arange(n)] = True
    return jnp.asarray(x), jnp.asarray(graph)


def numpy_graph_module(p, x, graph, keep=None, rate=0.3):
    """The original's Graph_Module in float64 NumPy, with dropout keep-masks ``keep`` (None: no dropout)."""
    p = jax.tree.map(lambda v: np.asarray(v, np.float64), p)
    x, a = np.asarray(x, np.float64), np.asarray(graph, np.float64)
    drop = (lambda name, v: v) if keep is None else (lambda name, v: np.where(keep[name], v / (1 - rate), 0.0))
    heads = []
    for k in range(4):
        head = p["graph"][str(k)]
        adj = a[:, HEAD_GRAPHS[k]]  # heads 0, 1: greater-number; 2, 3: attribute-between
        u = np.maximum(adj @ (x @ head["gc1"]["weight"]) + head["gc1"]["bias"], 0.0)
        u = drop(f"keep_head_{k}", u)
        heads.append(adj @ (u @ head["gc2"]["weight"]) + head["gc2"]["bias"])
    c = np.concatenate(heads, axis=-1)
    mean = c.mean(-1, keepdims=True)
    std = c.std(-1, ddof=1, keepdims=True)  # torch's x.std(): unbiased
    g = p["norm"]["a_2"] * (c - mean) / (std + 1e-6) + p["norm"]["b_2"] + x
    f = p["feed_foward"]
    hidden = drop("keep_feed_foward", np.maximum(g @ f["w_1"]["kernel"] + f["w_1"]["bias"], 0.0))
    return hidden @ f["w_2"]["kernel"] + f["w_2"]["bias"] + g


@pytest.fixture(scope="module")
def module_params():
    x, graph = module_inputs()
    params = nn.meta.unbox(GraphModule(H).init(jax.random.key(0), x, graph))["params"]
    # random norm parameters, so a_2 and b_2 are exercised (they start at ones and zeros)
    keys = jax.random.split(jax.random.key(1), 2)
    params["norm"] = {"a_2": 1 + 0.3 * jax.random.normal(keys[0], (H,)), "b_2": 0.3 * jax.random.normal(keys[1], (H,))}
    return params


def test_parameters_are_named_and_initialised_as_the_original(module_params):
    x, graph = module_inputs()
    boxed = GraphModule(H).init(jax.random.key(0), x, graph)
    params = nn.meta.unbox(boxed)["params"]
    shapes = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    d_k = H // 4
    expected = {f"['graph']['{k}']['{n}']['{w}']": s for k in range(4) for n, w, s in (
        ("gc1", "weight", (H, H)), ("gc1", "bias", (H,)), ("gc2", "weight", (H, d_k)), ("gc2", "bias", (d_k,)))}
    expected |= {f"['feed_foward']['{n}']['{w}']": s for n in ("w_1", "w_2") for w, s in (("kernel", (H, H)),
                                                                                           ("bias", (H,)))}
    expected |= {"['norm']['a_2']": (H,), "['norm']['b_2']": (H,)}
    assert shapes == expected
    for k in range(1, 4):  # one draw, copied: the four heads start identical
        for a, b in zip(jax.tree.leaves(params["graph"]["0"]), jax.tree.leaves(params["graph"][str(k)])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # U(±1/sqrt(out)) for the graph convolutions, U(±1/sqrt(in)) for the linears, ones and zeros for the norm
    big = nn.meta.unbox(GraphModule(64).init(jax.random.key(2), jnp.zeros((1, 2, 64)), jnp.ones((1, 2, 2, 2))))
    head = big["params"]["graph"]["0"]
    for leaf, bound in ((head["gc1"]["weight"], 1 / 8), (head["gc1"]["bias"], 1 / 8), (head["gc2"]["weight"], 1 / 4),
                        (head["gc2"]["bias"], 1 / 4), (big["params"]["feed_foward"]["w_1"]["kernel"], 1 / 8)):
        assert np.abs(np.asarray(leaf)).max() <= bound and np.abs(np.asarray(leaf)).max() > 0.8 * bound
    assert np.all(np.asarray(params["norm"]["a_2"]) == 1) and np.all(np.asarray(params["norm"]["b_2"]) == 0)
    axes = nn.get_partition_spec(boxed)["params"]
    assert tuple(axes["graph"]["2"]["gc1"]["weight"]) == ("hidden", "mlp")
    assert tuple(axes["feed_foward"]["w_2"]["kernel"]) == ("mlp", "hidden")
    assert tuple(axes["norm"]["a_2"]) == ("hidden",)


def test_graph_module_equals_its_formula(module_params):
    x, graph = module_inputs()
    module = GraphModule(H)
    out = module.apply({"params": module_params}, x, graph)
    np.testing.assert_allclose(np.asarray(out), numpy_graph_module(module_params, x, graph), rtol=1e-4, atol=1e-4)
    # with dropout: the keep-masks of the four heads and of the feed-forward, each its own draw
    out, state = module.apply({"params": module_params}, x, graph, deterministic=False,
                              rngs={"dropout": jax.random.key(7)}, mutable=["intermediates"])
    keep = {name: np.asarray(value[0]) for name, value in state["intermediates"].items()}
    assert sorted(keep) == ["keep_feed_foward", *(f"keep_head_{k}" for k in range(4))]
    assert not np.array_equal(keep["keep_head_0"], keep["keep_head_1"])
    assert 0.55 < np.mean(keep["keep_head_2"]) < 0.85  # rate 0.3
    np.testing.assert_allclose(np.asarray(out), numpy_graph_module(module_params, x, graph, keep), rtol=1e-4, atol=1e-4)
    # a padded position never feeds a real one: real rows equal the unpadded example's
    n = LENGTHS[1]
    padded = module.apply({"params": module_params}, x, graph)
    alone = module.apply({"params": module_params}, x[1:2, :n], graph[1:2, :, :n, :n])
    np.testing.assert_allclose(np.asarray(alone[0]), np.asarray(padded[1, :n]), rtol=1e-5, atol=1e-5)
    # the position-wise layers on the real tokens only (the task's evaluation batches): the same real rows, 0 elsewhere
    positions = jnp.asarray(real_positions(LENGTHS, L, sum(LENGTHS) + 3))
    real = np.arange(L)[None, :] < np.asarray(LENGTHS)[:, None]
    for dropout in (False, True):
        rngs = {"dropout": jax.random.key(7)} if dropout else {}
        dense_out = module.apply({"params": module_params}, x, graph, not dropout, rngs=rngs)
        packed_out = module.apply({"params": module_params}, x, graph, not dropout, positions, rngs=rngs)
        np.testing.assert_allclose(np.asarray(packed_out)[real], np.asarray(dense_out)[real], rtol=1e-5, atol=1e-5)
        assert not np.asarray(packed_out)[~real].any()


def test_layer_norm_uses_the_unbiased_std_with_eps_on_the_std():
    z = jnp.array([[1.0, 2.0, 4.0, 9.0], [3.0, 3.0, 3.0, 3.0]])
    out = np.asarray(layer_norm(z, jnp.full(4, 2.0), jnp.full(4, 0.5)))
    ref = 2.0 * (z[0] - z[0].mean()) / (np.std(np.asarray(z[0]), ddof=1) + 1e-6) + 0.5
    np.testing.assert_allclose(out[0], ref, rtol=1e-6)
    np.testing.assert_allclose(out[1], 0.5)  # a constant row: (z - mean) = 0, std 0, no NaN
    grad = jax.grad(lambda v: layer_norm(v, jnp.ones(4), jnp.zeros(4)).sum())(z)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_heads_start_identical_and_diverge_after_one_step_with_dropout(module_params):
    x, graph = module_inputs()
    module = GraphModule(H)
    params = nn.meta.unbox(module.init(jax.random.key(3), x, graph))["params"]
    target = jax.random.normal(jax.random.key(4), (B, L, H))

    @jax.jit
    def step(params, key):
        def loss(p):
            out = module.apply({"params": p}, x, graph, deterministic=False, rngs={"dropout": key})
            return jnp.mean((out - target) ** 2)

        return jax.tree.map(lambda p, g: p - 0.1 * g, params, jax.grad(loss)(params))

    def same(p, a, b):
        return all(np.array_equal(np.asarray(u), np.asarray(v))
                   for u, v in zip(jax.tree.leaves(p["graph"][a]), jax.tree.leaves(p["graph"][b])))

    assert same(params, "0", "1") and same(params, "0", "2") and same(params, "2", "3")
    stepped = step(params, jax.random.key(5))
    assert not any(same(stepped, str(a), str(b)) for a in range(4) for b in range(a + 1, 4))


# ------------------------------------------------------------------ the whole model


def g2t_batch():
    """GTS's test batch (tests/test_gts.py) with graphs: equal numbers, repeated and out-of-range cells."""
    batch = test_gts.make_batch()
    values = [[2, 5, 2], [1, 1], [3, 1, 4], [7, 7, 7]]
    cells = [[0, 1, 2, 2, 4, 9], [0, 2, 3, 9], [2, 3, 5, 5, 0], [1, 3, 0]]
    edges = []
    for b, n in enumerate(np.asarray(batch["lengths"])):
        count = int(batch["num_count"][b])
        edges.append(graphs.graph_edges(graphs.example_graphs(
            np.asarray(batch["input_ids"][b, :n]), np.asarray(batch["num_pos"][b, :count]), cells[b], values[b])))
    return {**batch, "graph": jnp.asarray(graphs.batch_graphs(edges, batch["input_ids"].shape[1]))}


def g2t_model():
    return Graph2Tree(vocab_size=10, num_ops=test_gts.OPS, num_generate=test_gts.G, unk_id=test_gts.UNK,
                      hidden=test_gts.H, embedding_size=test_gts.E)


@pytest.fixture(scope="module")
def model_and_params():
    batch = g2t_batch()
    m = g2t_model()
    params = nn.meta.unbox(jax.jit(lambda k, b: m.init(k, b, method="declare"))(jax.random.key(0), batch))["params"]
    return m, params, batch, jax.jit(lambda p, b: m.apply({"params": p}, b, method="teacher_forced"))


def test_batched_teacher_forcing_equals_the_step_by_step_reference(model_and_params):
    m, params, batch, teacher_forced = model_and_params
    logits, targets, _ = teacher_forced(params, batch)
    for b, target in enumerate(test_gts.TARGETS):
        expected = test_gts.reference_logits(m, params, batch, b)
        np.testing.assert_allclose(np.asarray(logits[b, : len(target)]), np.asarray(expected), rtol=1e-4, atol=1e-4)
    lengths = batch["target_lengths"]
    manual = -sum(float(jax.nn.log_softmax(logits[b, t])[targets[b, t]])
                  for b in range(4) for t in range(int(lengths[b])))
    loss = masked_cross_entropy(logits, targets, lengths)  # __call__'s loss (make_loss's value: the slow test below)
    np.testing.assert_allclose(float(loss), manual / int(lengths.sum()), rtol=1e-5)

    # the decoder reads the graph module's outputs; the problem vector is the biLSTM's (GTS's), taken before it
    @jax.jit
    def encodings(p, b):
        gts = GTS(vocab_size=10, num_ops=test_gts.OPS, num_generate=test_gts.G, unk_id=test_gts.UNK,
                  hidden=test_gts.H, embedding_size=test_gts.E)
        without_gcn = {k: v for k, v in p.items() if k != "gcn"}
        return (m.apply({"params": p}, b, method="encode_batch"),
                gts.apply({"params": without_gcn}, b["input_ids"], b["lengths"], method=GTS.encode))

    (enc, problem), (lstm, gts_problem) = encodings(params, batch)
    np.testing.assert_array_equal(np.asarray(problem), np.asarray(gts_problem))
    assert not np.allclose(np.asarray(enc), np.asarray(lstm))


def test_padding_never_changes_an_example(model_and_params):
    m, params, batch, teacher_forced = model_and_params
    full, _, _ = teacher_forced(params, batch)
    n, steps, count = 4, 3, 2
    alone = {k: v[1:2] for k, v in batch.items()}
    alone |= {"input_ids": alone["input_ids"][:, :n], "graph": alone["graph"][:, :, :n, :n],
              "num_pos": alone["num_pos"][:, :count],
              "unk_candidates": alone["unk_candidates"][:, :steps, :test_gts.G + count]}
    alone |= {k: alone[k][:, :steps] for k in ("targets", "node_slot", "left_step", "merge_op", "merge_sub")}
    single, _, _ = teacher_forced(params, alone)
    width = test_gts.OPS + test_gts.G + count
    np.testing.assert_allclose(np.asarray(single[0, :, :width]), np.asarray(full[1, :steps, :width]),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # make_loss's decoder gradients are GTS's (tests/test_gts.py); this adds the graph module's
def test_deferred_weight_gradients_equal_autodiff_with_dropout(model_and_params):
    m, params, batch, _ = model_and_params
    fast = test_gts.check_loss_gradients_equal_autodiff(m, params, batch, jax.random.key(3))
    assert float(jnp.abs(fast[1]["gcn"]["graph"]["3"]["gc2"]["weight"]).sum()) > 0


@pytest.mark.slow  # the decoder's beam search is GTS's (tests/test_gts_beam.py); this adds Graph2Tree's encoder
def test_beam_search_equals_the_python_reference():
    """tests/test_gts_beam.py's transliteration of evaluate_tree, on Graph2Tree (graphs included)."""
    params = test_gts_beam.init_params(0, test_gts_beam.TRAIN_STEPS, "graph2tree")
    batch = test_gts_beam.make_batch(10, kind="graph2tree")
    out = test_gts_beam.check_against_reference(params, batch, 5, max_length=20, kind="graph2tree")
    assert int(out["length"].max()) >= 5  # trees with merges
    lengths = np.asarray(batch["lengths"])  # the graph module on the real tokens only decodes the same
    packed = {**batch, "gcn_positions": jnp.asarray(real_positions(lengths, batch["input_ids"].shape[1],
                                                                   int(lengths.sum())))}
    again = test_gts_beam.decoder(5, 20, "graph2tree")(params, packed)
    np.testing.assert_array_equal(np.asarray(again["tokens"]), np.asarray(out["tokens"]))
    for b in (2, 5):  # padding never changes a problem
        alone = test_gts_beam.decoder(5, 20, "graph2tree")(params, test_gts_beam.problem(batch, b))
        np.testing.assert_array_equal(np.asarray(alone["tokens"][0]), np.asarray(out["tokens"][b]))
        np.testing.assert_allclose(float(alone["score"][0]), float(out["score"][b]), atol=1e-5)
