"""Test setup: offline hub access, CPU, a small tree fixture shared by the sparsity tests."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from hypothesis import settings  # noqa: E402

# CI runs a fixed set of examples (no flaky landings); HYPOTHESIS_PROFILE=explore searches new ones.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("explore", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


import pytest  # noqa: E402

# the eleven algorithm names (DESIGN.md's order) and the keys every summary.json must have
ALGORITHMS = ["dense", "lth", "omp_after", "random_after", "gmp", "omp_before", "random_before", "snip", "rigl",
              "snip_rigl", "omp_rigl"]
SUMMARY_KEYS = {"task", "model", "pretrained", "algorithm", "label", "seed", "fold", "target_sparsity",
                "sparsity_label", "scheduled_sparsity", "actual_sparsity", "metric", "metrics", "reported", "final",
                "best", "best_step", "num_eval", "steps", "epochs", "wall_time_s", "train_steps_per_s", "num_params",
                "num_prunable", "per_leaf_sparsity"}


@pytest.fixture(scope="module")
def train_main(tmp_path_factory):
    """``smc_jax.cli.train.main`` run in this process, with a persistent compilation cache."""
    import jax

    cache = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    from smc_jax.cli.train import main

    return main
