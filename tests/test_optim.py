"""train/optim.py: the optimizers, parameter groups and schedules against the formulas of the originals."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from smc_jax.train.optim import (
    Constant,
    InverseSqrt,
    OneCycle,
    Optimizer,
    PolynomialDecay,
    StepLR,
    WarmupCosine,
    group_labels,
)


def rates(schedule, counts, peak=1.0, steps_per_epoch=None, total=100):
    fn = schedule.learning_rate(peak, steps_per_epoch, total)
    return [float(fn(t)) if callable(fn) else float(fn) for t in counts]


def test_polynomial_decay_is_fairseqs():
    got = rates(PolynomialDecay(warmup_steps=150), (0, 1, 2, 75, 150, 151, 1575, 3000), peak=1e-5, total=3000)
    want = [1e-5 / 150, 1e-5 / 150, 2e-5 / 150, 0.5e-5, 1e-5, 1e-5 * (1 - 1 / 2850), 0.5e-5, 0.0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(rates(PolynomialDecay(0, end_learning_rate=0.1, power=2.0), (0, 50, 100)),
                               [1.0, 0.1 + 0.9 * 0.25, 0.1], rtol=1e-6)


def test_inverse_sqrt_starts_at_zero_and_decays_after_warmup():
    # spec/translation.md §3: lr(n) = peak*n/W for n < W, else peak*sqrt(W/n); the first update has lr 0
    got = rates(InverseSqrt(warmup_steps=2500), (0, 1, 1250, 2500, 10000), peak=3e-5, total=40000)
    np.testing.assert_allclose(got, [0.0, 3e-5 / 2500, 1.5e-5, 3e-5, 3e-5 * 0.5], rtol=1e-6)


def test_step_lr_halves_every_step_epochs():
    assert rates(StepLR(2, 0.5), (0, 5, 6, 11, 12), steps_per_epoch=3) == [1.0, 1.0, 0.5, 0.5, 0.25]
    with pytest.raises(ValueError, match="StepLR counts epochs"):
        StepLR().learning_rate(1.0, None, 10)


def test_one_cycle_per_epoch_matches_torch_and_the_protein_recipe():
    # spec/protein.md §3: max_lr 1e-6, 4 epochs stepped once per epoch: (lr, beta1) per epoch
    schedule, spe = OneCycle(epochs=4), 7
    lr = schedule.learning_rate(1e-6, spe, 4 * spe)
    b1 = schedule.b1(0.9, spe, 4 * spe)
    epochs = [e * spe + k for e in range(4) for k in (0, spe - 1)]  # every update of an epoch shares its values
    got = np.array([[float(lr(t)), float(b1(t))] for t in epochs]).reshape(4, 2, 2)
    assert np.array_equal(got[:, 0], got[:, 1])
    np.testing.assert_allclose(got[:, 0, 0], [4.0e-8, 8.12e-7, 2.83e-7, 4.0e-12], rtol=2e-3)
    np.testing.assert_allclose(got[:, 0, 1], [0.95, 0.869, 0.922, 0.95], atol=1e-3)
    three = OneCycle(epochs=3)  # the prune_rigl variant: (9.94e-7, .851), (4.63e-7, .904), (4e-12, .95)
    got3 = [(float(three.learning_rate(1e-6, 1, 3)(e)), float(three.b1(0.9, 1, 3)(e))) for e in (0, 1, 2)]
    np.testing.assert_allclose([g[0] for g in got3], [9.94e-7, 4.63e-7, 4e-12], rtol=3e-3)
    np.testing.assert_allclose([g[1] for g in got3], [0.851, 0.904, 0.95], atol=1e-3)


def test_one_cycle_cycles_adams_beta1():
    params = {"w": jnp.ones(3)}
    tx = Optimizer(kind="adamw", learning_rate=1e-3, weight_decay=0.0, schedule=OneCycle(epochs=4)).build({}, 1, 4)
    state = tx.init(params)
    _, state = tx.update({"w": jnp.ones(3)}, state, params)
    hyper = {k: float(v) for k, v in state.hyperparams.items()}
    assert hyper["b1"] == pytest.approx(0.95, rel=1e-5) and hyper["learning_rate"] == pytest.approx(1e-3 / 25, rel=1e-5)


def test_warmup_cosine_and_constant():
    got = rates(WarmupCosine(warmup_steps=10), (0, 5, 10, 55, 100))
    np.testing.assert_allclose(got, [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)
    assert rates(Constant(), (0, 99)) == [1.0, 1.0]


def test_adamw_decays_every_weight_decoupled():
    """fairseq Adam / torch AdamW: p <- p - lr*wd*p besides the Adam step, biases and LayerNorms included."""
    tx = Optimizer(kind="adamw", learning_rate=0.1, weight_decay=0.5).build({}, 10, 10)
    params = {"w": jnp.ones((2, 2)), "b": jnp.full((2,), 2.0)}
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["w"], 1 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(new["b"], 2 - 0.1 * 0.5 * 2, rtol=1e-6)


def test_groups_frozen_and_labels_by_regex():
    params = {"encoder": {"kernel": jnp.ones(2)}, "head": {"kernel": jnp.ones(2)}, "bias": jnp.ones(2)}
    labels = group_labels({"head": r"head/.*", "enc": r"encoder/.*"})(params)
    assert labels == {"encoder": {"kernel": "enc"}, "head": {"kernel": "head"}, "bias": "default"}
    tx = Optimizer(kind="adam_l2", learning_rate=0.1, weight_decay=0.3,
                   groups={"head": {"frozen": True}, "enc": {"learning_rate": 0.01}}).build(
        {"head": r"head/.*", "enc": r"encoder/.*"}, None, 10)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    assert float(jnp.abs(updates["head"]["kernel"]).max()) == 0.0  # frozen: no update, no decay
    np.testing.assert_allclose(updates["encoder"]["kernel"], -0.01, rtol=1e-5)  # Adam's first step: lr * sign
    np.testing.assert_allclose(updates["bias"], -0.1, rtol=1e-5)


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="Optimizer.kind must be one of adam, adamw, adam_l2"):
        Optimizer(kind="sgd")
    with pytest.raises(ValueError, match="unknown setting 'lr'"):
        Optimizer(groups={"embedding": {"lr": 1.0}})
    with pytest.raises(ValueError, match="names group 'embeding', which this task does not have; groups: default, "
                                         "embedding"):
        Optimizer(groups={"embeding": {"learning_rate": 1.0}}).build({"embedding": "embedding/.*"}, 1, 1)
