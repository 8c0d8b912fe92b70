"""Test setup: offline hub access, CPU, the shared-data path, one persistent compilation cache for the session,
the tiny random RoBERTa checkpoint, and the train command run in-process."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from hypothesis import settings  # noqa: E402

# CI runs a fixed set of examples (no flaky landings); HYPOTHESIS_PROFILE=explore searches new ones.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("explore", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def compiled_examples(n: int) -> int:
    """Examples for a property test whose every example compiles new programs (random shapes): a sixth of ``n``
    (at least 6) in the default ``ci`` profile, ``n`` in any other (``HYPOTHESIS_PROFILE=explore``)."""
    return max(6, n // 6) if os.environ.get("HYPOTHESIS_PROFILE", "ci") == "ci" else n


from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# ../shared/data (SOURCE.md in each folder); SMC_SHARED_DATA points elsewhere
SHARED_DATA = Path(os.environ.get("SMC_SHARED_DATA", REPO.parent / "shared" / "data"))

# the eleven algorithm names (DESIGN.md's order) and the keys every summary.json must have
ALGORITHMS = ["dense", "lth", "omp_after", "random_after", "gmp", "omp_before", "random_before", "snip", "rigl",
              "snip_rigl", "omp_rigl"]
SUMMARY_KEYS = {"task", "model", "pretrained", "algorithm", "label", "seed", "fold", "target_sparsity",
                "sparsity_label", "scheduled_sparsity", "actual_sparsity", "metric", "metrics", "reported", "final",
                "best", "best_step", "num_eval", "steps", "epochs", "wall_time_s", "train_steps_per_s", "num_params",
                "num_prunable", "per_leaf_sparsity"}


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """One persistent compilation cache for the whole session: in-process runs and subprocesses (which inherit
    ``JAX_COMPILATION_CACHE_DIR``) share compiled programs. jax's settings and the environment are restored at the
    end. A ``JAX_COMPILATION_CACHE_DIR`` set before the session is used as it is."""
    import jax

    before = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    settings = {name: getattr(jax.config, name) for name in ("jax_compilation_cache_dir",
                                                             "jax_persistent_cache_min_compile_time_secs")}
    # pytest-xdist workers share one cache beside their own temp folders
    shared = tmp_path_factory.getbasetemp().parent if os.environ.get("PYTEST_XDIST_WORKER") else None
    path = before or (str(shared / "jax_cache") if shared else str(tmp_path_factory.mktemp("jax_cache")))
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    yield path
    for name, value in settings.items():
        jax.config.update(name, value)
    if before is None:
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory, shared_data) -> Path:
    """A 2-layer, 32-wide random RoBERTa (LM head included) with a BPE tokenizer trained on the commonsense data,
    saved once per session as a checkpoint directory (:func:`hf_fixtures.tiny_commonsense_roberta`)."""
    pytest.importorskip("torch")
    from hf_fixtures import tiny_commonsense_roberta

    return tiny_commonsense_roberta(tmp_path_factory.mktemp("tiny_cs_roberta"), shared_data)


@pytest.fixture(scope="session")
def train_main():
    """``smc_jax.cli.train.main``, run in this process (with the session's compilation cache)."""
    from smc_jax.cli.train import main

    return main
