"""smc_jax.sparsity: SMC-Bench's sparse algorithms as pure functions on mask pytrees and one optax transform.

Imports only jax, optax and numpy; knows nothing of tasks or models. See the README for a bare optax loop.
"""

from smc_jax.sparsity.algorithms import (
    ALGORITHMS,
    GMP,
    LTH,
    SNIP,
    Algorithm,
    Dense,
    OMPAfter,
    OMPBefore,
    RandomAfter,
    RandomBefore,
    RigL,
    SparseAlgorithm,
    get_algorithm,
)
from smc_jax.sparsity.counts import Float64Bits, ceil_product, float64_bits, scaled_count
from smc_jax.sparsity.criteria import (
    global_magnitude_masks,
    global_topk_masks,
    layerwise_topk_masks,
    magnitude_scores,
    random_layerwise_masks,
    random_masks,
    rigl_update,
    snip_masks,
    snip_scores,
)
from smc_jax.sparsity.distributions import DISTRIBUTIONS, erk_densities, uniform_densities
from smc_jax.sparsity.masks import (
    apply_masks,
    check_masks,
    mask_items,
    mask_shapes,
    num_active,
    num_prunable,
    path_str,
    prunable_masks,
    sparsity_report,
)
from smc_jax.sparsity.schedules import (
    cosine_drop_fraction,
    gmp_events,
    gmp_sparsity,
    gmp_window,
    imp_num_rounds,
    imp_round_sparsity,
    periodic_events,
)
from smc_jax.sparsity.selection import TIE_BREAKS
from smc_jax.sparsity.transform import SparseState, get_masks, get_sparse_state, sparse_optimizer

__all__ = [
    "ALGORITHMS", "Algorithm", "Dense", "GMP", "LTH", "OMPAfter", "OMPBefore", "RandomAfter", "RandomBefore",
    "RigL", "SNIP", "SparseAlgorithm", "get_algorithm",
    "global_magnitude_masks", "global_topk_masks", "layerwise_topk_masks", "magnitude_scores",
    "random_layerwise_masks", "random_masks", "rigl_update", "snip_masks", "snip_scores", "TIE_BREAKS",
    "Float64Bits", "ceil_product", "float64_bits", "scaled_count",
    "DISTRIBUTIONS", "erk_densities", "uniform_densities",
    "apply_masks", "check_masks", "mask_items", "mask_shapes", "num_active", "num_prunable", "path_str",
    "prunable_masks", "sparsity_report",
    "cosine_drop_fraction", "gmp_events", "gmp_sparsity", "gmp_window", "imp_num_rounds",
    "imp_round_sparsity", "periodic_events",
    "SparseState", "get_masks", "get_sparse_state", "sparse_optimizer",
]
