"""The named algorithms of SMC-Bench: nine frozen dataclasses behind eleven experiment names.

Each dataclass holds its hyperparameters as fields (change them with ``dataclasses.replace``) and knows:

- ``init_masks(params, masks, *, key=None, grads=None)``: the masks sparse training starts from, given
  the weights it starts from (the loaded weights for "Before", the trained dense weights for "After");
- ``is_update_step(step, total_steps)``, ``mask_update(step, params, grads, masks, total_steps)``,
  ``init_state``/``next_state``: the scheduled mask updates that :func:`smc_jax.sparsity.sparse_optimizer`
  runs inside the step (under a ``lax.cond`` on ``is_update_step``).

The multi-phase algorithms (``lth``, ``omp_after``, ``random_after``) need a training loop to drive their
phases; they provide the pieces (prune, rewind, round sparsities) and the training engine drives them.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from smc_jax.sparsity import criteria, distributions, schedules
from smc_jax.sparsity.counts import Float64Bits, float64_bits
from smc_jax.sparsity.masks import PyTree, apply_masks, mask_shapes, num_prunable
from smc_jax.sparsity.selection import check_tie_break, derive_seed

INITS = ("random", "snip", "omp")


def _check_fraction(name: str, value: float, low: float = 0.0, high: float = 1.0, high_open: bool = False):
    ok = low <= value < high if high_open else low <= value <= high
    if not ok:
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name} must be in [{low}, {high}{bracket}, got {value}")


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """Base class: a static algorithm whose masks never change during training."""

    NAME: ClassVar[str] = ""
    LABEL: ClassVar[str] = ""
    phase: ClassVar[str] = "before"  # before | during | after: when the masks are decided
    dynamic: ClassVar[bool] = False  # update_masks changes the masks during training

    @property
    def name(self) -> str:
        """The experiment name of DESIGN.md (``rigl``, ``snip_rigl``, …)."""
        return self.NAME

    @property
    def label(self) -> str:
        """The label of the paper's figures (``Random+RigL``, …)."""
        return self.LABEL

    @property
    def needs_grads(self) -> bool:
        """Whether ``init_masks`` needs the gradients of one batch (SNIP)."""
        return False

    def init_masks(self, params: PyTree, masks: PyTree, *, key: jax.Array | None = None,
                   grads: PyTree | None = None) -> PyTree:
        """The masks to start sparse training from; ``masks`` are the prunable (all-True) masks."""
        return masks

    def init_state(self, masks: PyTree, total_steps: int) -> dict[str, jax.Array]:
        """The algorithm's own optimizer-state entries (scalars for logging)."""
        return {}

    def update_steps(self, total_steps: int) -> list[int]:
        """The steps (1-based) after which the masks change, computed on the host; none when static."""
        return []

    def is_update_step(self, step: jax.Array, total_steps: int) -> jax.Array:
        """Whether step ``step`` (a traced int) is one of :meth:`update_steps`."""
        return schedules.event_index(step, self.update_steps(total_steps))[0]

    def mask_update(self, step: jax.Array, params: PyTree, grads: PyTree, masks: PyTree,
                    total_steps: int) -> PyTree:
        """The new masks at an update step, from the weights and this step's dense gradients."""
        return masks

    def next_state(self, step: jax.Array, state: dict[str, jax.Array], total_steps: int) -> dict[str, jax.Array]:
        """The algorithm's state after step ``step``."""
        return state


@dataclasses.dataclass(frozen=True)
class Dense(Algorithm):
    """Dense fine-tuning: no pruning; the masks stay all-True and updates are not masked."""

    NAME: ClassVar[str] = "dense"
    LABEL: ClassVar[str] = "Dense"


@dataclasses.dataclass(frozen=True)
class SparseAlgorithm(Algorithm):
    """Fields shared by every sparse algorithm.

    - ``sparsity``: the final target, in [0, 1).
    - ``mask_gradients``: zero the gradients of pruned weights before the inner optimizer (canonical;
      SMC-Bench keeps gradients and optimizer moments dense, SPEC §2.2).
    - ``fairseq_order``: run the mask update on the pre-update weights and gradients, before the inner
      update, as fairseq's trainer does (SPEC §2.1); the default is the arithmetic code's order.
    - ``tie_break``: which of the weights tied at a selection threshold are kept: ``'random'`` (a seeded
      pseudo-random subset, spread over the tied layers in proportion to their tied counts), ``'position'``
      (the earliest, in leaf-path order: layer densities then depend on parameter names) or ``'faithful'``
      (SMC-Bench's strict threshold; see :mod:`smc_jax.sparsity.selection`).
    - ``tie_seed``: the seed of the random tie order; ``None`` takes the run's seed (the training pipelines
      fill it in), 0 when called directly. Mask updates mix in the step, LTH rounds the round.
    """

    sparsity: float = 0.5
    mask_gradients: bool = False
    fairseq_order: bool = False
    tie_break: str = "random"
    tie_seed: int | None = None

    def __post_init__(self):
        _check_fraction("sparsity", float(self.sparsity), high_open=True)
        check_tie_break(self.tie_break)

    def ties(self, *salts: Any) -> dict[str, Any]:
        """The ``tie_break``/``seed`` arguments of the criteria, the seed mixed with ``salts`` (a step)."""
        return {"tie_break": self.tie_break, "seed": derive_seed(self.tie_seed or 0, *salts)}


def _random_init(masks: PyTree, sparsity: float, key: jax.Array | None, distribution: str,
                 power_scale: float) -> PyTree:
    if key is None:
        raise ValueError("random pruning needs a PRNG key: pass key=jax.random.key(seed)")
    if distribution == "bernoulli":
        return criteria.random_masks(key, masks, sparsity)
    shapes = mask_shapes(masks)
    if distribution == "uniform":
        densities = distributions.uniform_densities(shapes, 1.0 - sparsity)
    else:
        densities = distributions.erk_densities(shapes, 1.0 - sparsity, power_scale)
    return criteria.random_layerwise_masks(key, masks, densities)


def _snip_init(params: PyTree, masks: PyTree, sparsity: float, grads: PyTree | None, ties: dict) -> PyTree:
    if grads is None:
        raise ValueError("SNIP needs the gradients of one batch: pass grads=jax.grad(loss)(params, batch)")
    return criteria.snip_masks(params, grads, masks, sparsity, **ties)


def _check_distribution(distribution: str) -> None:
    if distribution not in distributions.DISTRIBUTIONS:
        raise ValueError(
            f"unknown distribution {distribution!r}; choose one of: {', '.join(distributions.DISTRIBUTIONS)}"
        )


@dataclasses.dataclass(frozen=True)
class _GlobalMagnitude(SparseAlgorithm):
    """One-shot global magnitude pruning of the weights ``init_masks`` is given."""

    def init_masks(self, params, masks, *, key=None, grads=None):
        return criteria.global_magnitude_masks(params, masks, self.sparsity, **self.ties(0))


@dataclasses.dataclass(frozen=True)
class _Random(SparseAlgorithm):
    """One-shot random pruning with a layer budget ``distribution``."""

    distribution: str = "bernoulli"
    erk_power_scale: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        _check_distribution(self.distribution)

    def init_masks(self, params, masks, *, key=None, grads=None):
        return _random_init(masks, self.sparsity, key, self.distribution, self.erk_power_scale)


@dataclasses.dataclass(frozen=True)
class OMPBefore(_GlobalMagnitude):
    """One-shot global magnitude pruning of the loaded weights, then static sparse training ("OMP (Before)").

    SMC-Bench's ``one_shot_gm`` over pretrained and freshly initialised tensors alike, which makes whole
    randomly initialised layers vanish at high sparsity (layer collapse, SPEC Q-A5). Keeps exactly
    ``int(N·(1−s))`` weights (the original keeps one fewer).
    """

    NAME: ClassVar[str] = "omp_before"
    LABEL: ClassVar[str] = "OMP (Before)"


@dataclasses.dataclass(frozen=True)
class RandomBefore(_Random):
    """Random pruning of the loaded weights, then static sparse training ("Random (Before)").

    ``distribution='bernoulli'`` (SMC-Bench): each weight kept with probability 1 − s, so per-layer counts
    are random (not the exact-count uniform masks of Liu et al. 2022, which ``'uniform'`` gives; ``'erk'``
    gives exact-count ERK budgets).
    """

    NAME: ClassVar[str] = "random_before"
    LABEL: ClassVar[str] = "Random (Before)"


@dataclasses.dataclass(frozen=True)
class SNIP(SparseAlgorithm):
    """SNIP (Lee et al. 2019): keep the largest ``|w·g|`` of one batch, globally, then static ("SNIP (Before)").

    SMC-Bench scores a pretrained network (plus randomly initialised heads) on one mini-batch of 4–16
    examples; embedding rows absent from that batch score 0 and are pruned first. The exact count here
    fixes the original's overshoot on tied zero scores (SPEC Q-A4).
    """

    NAME: ClassVar[str] = "snip"
    LABEL: ClassVar[str] = "SNIP (Before)"

    @property
    def needs_grads(self) -> bool:
        return True

    def init_masks(self, params, masks, *, key=None, grads=None):
        return _snip_init(params, masks, self.sparsity, grads, self.ties(0))


@dataclasses.dataclass(frozen=True)
class OMPAfter(_GlobalMagnitude):
    """Train dense, prune the trained weights by global magnitude, fine-tune again ("OMP (After)").

    As SMC-Bench's figures: the fine-tuning restarts from the pruned trained weights with a fresh optimizer
    and the full schedule (no rewinding). ``init_masks`` takes the trained dense weights.
    """

    NAME: ClassVar[str] = "omp_after"
    LABEL: ClassVar[str] = "OMP (After)"
    phase: ClassVar[str] = "after"


@dataclasses.dataclass(frozen=True)
class RandomAfter(_Random):
    """Train dense, prune the trained weights at random, fine-tune again ("Random (After)").

    ``distribution`` as in :class:`RandomBefore`. (The fairseq README runs this with
    ``oneshot_magnitude``, a copy-paste bug, SPEC Q-C4; this is random, as intended.)
    """

    NAME: ClassVar[str] = "random_after"
    LABEL: ClassVar[str] = "Random (After)"
    phase: ClassVar[str] = "after"


@dataclasses.dataclass(frozen=True)
class LTH(SparseAlgorithm):
    """Lottery tickets by iterative magnitude pruning with rewinding ("LTH (After)").

    Frankle & Carbin 2019 / Chen et al. 2020: train, prune ``prune_fraction`` of the survivors globally,
    rewind the survivors to the initial (pretrained + initial head) weights, repeat. Round k has sparsity
    ``1 − (1 − p)^k``; rounds run until that reaches ``sparsity − 0.005``. Round k keeps exactly
    ``int(N·(1−p)^k)`` weights (the original compounds ``int()`` per round). ``rewind=False`` continues from
    the trained weights instead (fairseq's ``iterative_magnitude``, "LRR"). Round 0 is the dense run.
    """

    NAME: ClassVar[str] = "lth"
    LABEL: ClassVar[str] = "LTH (After)"
    phase: ClassVar[str] = "after"
    prune_fraction: float = 0.2
    rewind: bool = True

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.prune_fraction < 1.0:
            raise ValueError(f"prune_fraction must be in (0, 1), got {self.prune_fraction}")

    def num_rounds(self) -> int:
        """Pruning rounds after the dense round 0."""
        return schedules.imp_num_rounds(self.sparsity, self.prune_fraction)

    def round_sparsity(self, round_index: int) -> float:
        """Target sparsity of round ``round_index`` (0 = dense)."""
        return schedules.imp_round_sparsity(round_index, self.prune_fraction)

    def prune(self, params: PyTree, masks: PyTree, round_index: int) -> PyTree:
        """Masks of round ``round_index`` from the previous round's trained ``params`` and ``masks``."""
        if round_index < 1:
            raise ValueError(f"IMP rounds to prune start at 1, got {round_index}")
        return criteria.global_magnitude_masks(params, masks, self.round_sparsity(round_index),
                                               **self.ties(-round_index))

    def start_params(self, initial_params: PyTree, trained_params: PyTree, masks: PyTree) -> PyTree:
        """The weights a round trains from: the rewound initial weights (or the trained ones), masked."""
        return apply_masks(initial_params if self.rewind else trained_params, masks)


@dataclasses.dataclass(frozen=True)
class GMP(SparseAlgorithm):
    """Gradual magnitude pruning (Zhu & Gupta 2017) as SMC-Bench runs it ("GMP (During)").

    Cubic schedule ``s_t = s·(1 − (1 − p)³)`` over the window ``[begin_fraction·T, end_fraction·T)``,
    pruned every ``update_frequency`` steps with one global magnitude threshold (not per layer), starting
    from the pretrained dense model. A final prune at the window's end reaches the target exactly (the
    original stops just below it, SPEC Q-A11); pruned weights never return.
    """

    NAME: ClassVar[str] = "gmp"
    LABEL: ClassVar[str] = "GMP (During)"
    phase: ClassVar[str] = "during"
    dynamic: ClassVar[bool] = True
    update_frequency: int = 1000
    begin_fraction: float = 0.1
    end_fraction: float = 0.8

    def __post_init__(self):
        super().__post_init__()
        if int(self.update_frequency) < 1:
            raise ValueError(f"update_frequency must be >= 1, got {self.update_frequency}")
        _check_fraction("begin_fraction", float(self.begin_fraction))
        _check_fraction("end_fraction", float(self.end_fraction))
        if self.end_fraction < self.begin_fraction:
            raise ValueError(f"end_fraction {self.end_fraction} < begin_fraction {self.begin_fraction}")

    def window(self, total_steps: int) -> tuple[int, int]:
        """``(t0, t1)``: the pruning window in steps; reporting starts at ``t1``."""
        return schedules.gmp_window(total_steps, self.begin_fraction, self.end_fraction)

    def _schedule(self, n: int, total_steps: int) -> tuple[list[int], np.ndarray, np.ndarray]:
        """Event steps, their scheduled sparsities and kept counts ``int(n·(1−s_t))`` (host float64)."""
        events = self.update_steps(total_steps)
        t0, t1 = self.window(total_steps)
        targets = np.array([schedules.gmp_sparsity(t, self.sparsity, t0, t1) for t in events], np.float64)
        targets[np.asarray(events, np.int64) >= t1] = self.sparsity  # exactly the target at the window's end
        keep = np.array([int(n * (1.0 - s)) for s in targets], np.uint32)
        return events, targets, keep

    def init_state(self, masks, total_steps):
        return {"scheduled_sparsity": jnp.zeros((), jnp.float32)}

    def update_steps(self, total_steps):
        """The steps that prune: multiples of ``update_frequency`` in the window, plus its end."""
        return schedules.gmp_events(total_steps, self.update_frequency, self.begin_fraction, self.end_fraction)

    def mask_update(self, step, params, grads, masks, total_steps):
        events, _, keep = self._schedule(num_prunable(masks), total_steps)
        _, index = schedules.event_index(step, events)
        scores = criteria.magnitude_scores(params, masks)
        return criteria.global_topk_masks(scores, masks, jnp.asarray(keep)[index], **self.ties(step))

    def next_state(self, step, state, total_steps):
        events, targets, _ = self._schedule(0, total_steps)
        if not events:
            return state
        hit, index = schedules.event_index(step, events)
        target = jnp.asarray(targets, jnp.float32)[index]
        return {"scheduled_sparsity": jnp.where(hit, target, state["scheduled_sparsity"])}


@dataclasses.dataclass(frozen=True)
class RigL(SparseAlgorithm):
    """RigL (Evci et al. 2020) as SMC-Bench runs it: "Random+RigL", "SNIP+RigL", "OMP+RigL".

    ``init`` builds the starting masks (``random``: Bernoulli per element; ``snip``; ``omp``: global
    magnitude); then every ``update_frequency`` steps, per layer, drop the ``ceil(f_t·n_on)`` smallest
    ``|w|`` and grow as many largest ``|g|`` of this step's dense gradient, regrown weights starting at 0.
    SMC-Bench deviations kept by default: initial drop fraction 0.5 (not 0.3), cosine decay to 0.005 over
    the whole run with updates to the last step (``end_fraction=1.0``, not 0.75), per-layer budgets
    inherited from the init (``distribution='erk'``/``'uniform'`` give the canonical random budgets),
    optimizer moments not reset (``reset_moments=True`` zeroes them for regrown weights), just-dropped
    weights may regrow. Per-layer density is conserved exactly (the original drifts, SPEC Q-A13).
    """

    LABEL_BY_INIT: ClassVar[dict[str, str]] = {"random": "Random+RigL", "snip": "SNIP+RigL", "omp": "OMP+RigL"}
    NAME_BY_INIT: ClassVar[dict[str, str]] = {"random": "rigl", "snip": "snip_rigl", "omp": "omp_rigl"}
    phase: ClassVar[str] = "during"
    dynamic: ClassVar[bool] = True
    init: str = "random"
    update_frequency: int = 1000
    drop_fraction: float = 0.5
    final_drop_fraction: float = 0.005
    end_fraction: float = 1.0
    distribution: str = "bernoulli"
    erk_power_scale: float = 1.0
    reset_moments: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.init not in INITS:
            raise ValueError(f"unknown RigL init {self.init!r}; choose one of: {', '.join(INITS)}")
        _check_distribution(self.distribution)
        if self.init != "random" and self.distribution != "bernoulli":
            raise ValueError(f"distribution={self.distribution!r} applies to init='random' only")
        if int(self.update_frequency) < 1:
            raise ValueError(f"update_frequency must be >= 1, got {self.update_frequency}")
        for field in ("drop_fraction", "final_drop_fraction", "end_fraction"):
            _check_fraction(field, float(getattr(self, field)))

    @property
    def name(self) -> str:
        return self.NAME_BY_INIT[self.init]

    @property
    def label(self) -> str:
        return self.LABEL_BY_INIT[self.init]

    @property
    def needs_grads(self) -> bool:
        return self.init == "snip"

    def init_masks(self, params, masks, *, key=None, grads=None):
        if self.init == "snip":
            return _snip_init(params, masks, self.sparsity, grads, self.ties(0))
        if self.init == "omp":
            return criteria.global_magnitude_masks(params, masks, self.sparsity, **self.ties(0))
        return _random_init(masks, self.sparsity, key, self.distribution, self.erk_power_scale)

    def drop_fraction_at(self, step: Any, total_steps: int) -> Any:
        """The cosine drop fraction at ``step`` (float64 for a Python step, float32 for a traced one)."""
        return schedules.cosine_drop_fraction(step, total_steps, self.drop_fraction, self.final_drop_fraction)

    def _drop_fractions(self, step: jax.Array, total_steps: int) -> Float64Bits:
        """The float64 drop fraction of the update at ``step``, computed on the host for every update step."""
        events = self.update_steps(total_steps)
        table = float64_bits(np.array([self.drop_fraction_at(t, total_steps) for t in events] or [0.0]))
        _, index = schedules.event_index(step, events)
        return Float64Bits(table.hi[index], table.lo[index])

    def init_state(self, masks, total_steps):
        return {"drop_fraction": jnp.asarray(self.drop_fraction, jnp.float32)}

    def update_steps(self, total_steps):
        return schedules.periodic_events(total_steps, self.update_frequency, int(total_steps * self.end_fraction))

    def is_update_step(self, step, total_steps):
        return (step % self.update_frequency == 0) & (step <= int(total_steps * self.end_fraction))

    def mask_update(self, step, params, grads, masks, total_steps):
        return criteria.rigl_update(params, grads, masks, self._drop_fractions(step, total_steps),
                                    **self.ties(step))

    def next_state(self, step, state, total_steps):
        return {"drop_fraction": jnp.asarray(self.drop_fraction_at(step, total_steps), jnp.float32)}


ALGORITHMS: types.MappingProxyType[str, Algorithm] = types.MappingProxyType({
    "dense": Dense(),
    "lth": LTH(),
    "omp_after": OMPAfter(),
    "random_after": RandomAfter(),
    "gmp": GMP(),
    "omp_before": OMPBefore(),
    "random_before": RandomBefore(),
    "snip": SNIP(),
    "rigl": RigL(),
    "snip_rigl": RigL(init="snip"),
    "omp_rigl": RigL(init="omp"),
})


def get_algorithm(name: str) -> Algorithm:
    """The default instance for an experiment name; ``ValueError`` naming the valid ones otherwise."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]
