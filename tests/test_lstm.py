import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smc_jax.models.lstm import LSTM, LSTMDirection, reverse_padded


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_lstm(x, length, w_ih, w_hh, b_ih, b_hh, reverse=False):
    """Step-by-step reference for one sequence: x [T, D] -> outputs [T, H] (0 beyond length)."""
    hidden = w_hh.shape[0]
    h, c = np.zeros(hidden), np.zeros(hidden)
    out = np.zeros((x.shape[0], hidden))
    steps = range(length - 1, -1, -1) if reverse else range(length)
    for t in steps:
        gates = x[t] @ w_ih + b_ih + h @ w_hh + b_hh
        i, f, g, o = np.split(gates, 4)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        out[t] = h
    return out, h, c


def test_reverse_padded():
    x = jnp.arange(8.0).reshape(2, 4, 1)
    out = reverse_padded(x, jnp.array([3, 4]))[..., 0]
    np.testing.assert_array_equal(np.asarray(out), [[2, 1, 0, 3], [7, 6, 5, 4]])


@pytest.mark.parametrize("reverse", [False, True])
def test_direction_matches_numpy_reference(reverse):
    x = jax.random.normal(jax.random.key(0), (3, 5, 4))
    lengths = jnp.array([5, 2, 3])
    module = LSTMDirection(6, reverse=reverse)
    params = nn.meta.unbox(module.init(jax.random.key(1), x, lengths))["params"]
    assert params["weight_ih"].shape == (4, 24) and params["weight_hh"].shape == (6, 24)
    outputs, (h, c) = module.apply({"params": params}, x, lengths)
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    for b in range(3):
        ref, ref_h, ref_c = numpy_lstm(np.asarray(x[b], np.float64), int(lengths[b]), p["weight_ih"], p["weight_hh"],
                                       p["bias_ih"], p["bias_hh"], reverse)
        np.testing.assert_allclose(np.asarray(outputs[b]), ref, atol=1e-5)
        np.testing.assert_allclose(np.asarray(h[b]), ref_h, atol=1e-5)
        np.testing.assert_allclose(np.asarray(c[b]), ref_c, atol=1e-5)


def test_stacked_bidirectional_lstm_matches_torch_packed_sequences():
    torch = pytest.importorskip("torch")
    batch, steps, features, hidden = 4, 7, 5, 8
    x = np.array(jax.random.normal(jax.random.key(2), (batch, steps, features)))
    lengths = np.array([7, 3, 5, 1])
    module = LSTM(hidden, num_layers=2, bidirectional=True, dropout=0.5)
    params = nn.meta.unbox(module.init(jax.random.key(3), jnp.asarray(x), jnp.asarray(lengths)))["params"]
    assert sorted(params) == ["lstm_l0_bwd", "lstm_l0_fwd", "lstm_l1_bwd", "lstm_l1_fwd"]

    reference = torch.nn.LSTM(features, hidden, num_layers=2, bidirectional=True, batch_first=True, dropout=0.5)
    reference.eval()
    with torch.no_grad():
        for layer in range(2):
            for suffix, name in (("", "fwd"), ("_reverse", "bwd")):
                ours = params[f"lstm_l{layer}_{name}"]
                for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    value = np.asarray(ours[kind])
                    getattr(reference, f"{kind}_l{layer}{suffix}").copy_(torch.from_numpy(value.T.copy()))
        packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), torch.from_numpy(lengths),
                                                         batch_first=True, enforce_sorted=False)
        expected, _ = reference(packed)
        expected, _ = torch.nn.utils.rnn.pad_packed_sequence(expected, batch_first=True, total_length=steps)
    outputs = module.apply({"params": params}, jnp.asarray(x), jnp.asarray(lengths), deterministic=True)
    assert outputs.shape == (batch, steps, 2 * hidden)
    np.testing.assert_allclose(np.asarray(outputs), expected.numpy(), atol=1e-5)


def test_gradients_flow_and_dropout_needs_an_rng():
    x = jax.random.normal(jax.random.key(0), (2, 4, 3))
    lengths = jnp.array([4, 2])
    module = LSTM(5, num_layers=2, bidirectional=True, dropout=0.5)
    params = nn.meta.unbox(module.init(jax.random.key(1), x, lengths))["params"]
    loss = lambda p: jnp.sum(module.apply({"params": p}, x, lengths, deterministic=False,  # noqa: E731
                                          rngs={"dropout": jax.random.key(2)}) ** 2)
    grads = jax.grad(loss)(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))
    train = module.apply({"params": params}, x, lengths, deterministic=False, rngs={"dropout": jax.random.key(2)})
    evaluation = module.apply({"params": params}, x, lengths)
    assert not np.allclose(np.asarray(train), np.asarray(evaluation))


def test_recurrence_gradient_equals_autodiff_of_a_scan():
    """The custom VJP (reverse loop over max(lengths) steps, weight gradient as one matmul) is autodiff's."""
    from jax import lax

    from smc_jax.models.lstm import lstm_recurrence

    steps, batch, hidden = 7, 3, 5
    keys = jax.random.split(jax.random.key(0), 8)
    gates_x = tuple(jax.random.normal(keys[d], (steps, batch, 4 * hidden)) for d in range(2))
    w_hh = tuple(0.5 * jax.random.normal(keys[2 + d], (hidden, 4 * hidden)) for d in range(2))
    lengths = jnp.array([5, 2, 3])  # max 5 < 7: the last two steps are padding for every row
    weights = [jax.random.normal(keys[4 + j], (2, steps, batch, hidden)) for j in range(1)] + \
        [jax.random.normal(keys[5 + j], (2, batch, hidden)) for j in range(2)]

    def reference(gx, w):
        def step(carry, inputs):
            h, c = carry
            g_x, t = inputs
            i, f, g, o = jnp.split(g_x + h @ w, 4, axis=-1)
            c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
            keep = (t < lengths)[:, None]
            return (jnp.where(keep, h_new, h), jnp.where(keep, c_new, c)), jnp.where(keep, h_new, 0)

        zeros = jnp.zeros((batch, hidden))
        (h, c), out = lax.scan(step, (zeros, zeros), (gx, jnp.arange(steps)))
        return out, h, c

    def loss(fn):
        def value(gx, w):
            outs = fn(gx, w)
            return sum(jnp.sum(wt[d] * o[d]) for wt, o in zip(weights, outs) for d in range(2))
        return value

    ours = jax.grad(loss(lambda gx, w: lstm_recurrence(gx, w, lengths)), argnums=(0, 1))(gates_x, w_hh)
    by_direction = [reference(gates_x[d], w_hh[d]) for d in range(2)]
    expected = jax.grad(loss(lambda gx, w: tuple(zip(*[reference(gx[d], w[d]) for d in range(2)]))),
                        argnums=(0, 1))(gates_x, w_hh)
    assert by_direction[0][0].shape == (steps, batch, hidden)
    for got, want in zip(jax.tree.leaves(ours), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    assert float(jnp.abs(ours[1][0]).sum()) > 0
