import jax.numpy as jnp
import pytest

import smc_jax.sparsity as sp


def test_gmp_sparsity_cubic_hand_values():
    assert sp.gmp_sparsity(0, 0.8, 100, 500) == 0.0
    assert sp.gmp_sparsity(100, 0.8, 100, 500) == 0.0
    assert sp.gmp_sparsity(300, 0.8, 100, 500) == pytest.approx(0.8 * (1 - 0.5**3))  # 0.7
    assert sp.gmp_sparsity(200, 0.8, 100, 500) == pytest.approx(0.8 * (1 - 0.75**3))
    assert sp.gmp_sparsity(500, 0.8, 100, 500) == pytest.approx(0.8)
    assert sp.gmp_sparsity(900, 0.8, 100, 500) == pytest.approx(0.8)
    traced = sp.gmp_sparsity(jnp.int32(300), 0.8, 100, 500)
    assert float(traced) == pytest.approx(0.7, rel=1e-6)


def test_cosine_drop_fraction_matches_smc_bench_log():
    assert sp.cosine_drop_fraction(0, 19650) == pytest.approx(0.5)
    assert sp.cosine_drop_fraction(19650, 19650) == pytest.approx(0.005)
    assert sp.cosine_drop_fraction(30000, 19650) == pytest.approx(0.005)
    # "Prune rate: 0.4968" at t=1000, T=19650 (gts/results/g2t_svamp_omp_rigl_mawps-asdiv-a_svamp.out)
    assert round(sp.cosine_drop_fraction(1000, 19650), 4) == 0.4968
    assert sp.cosine_drop_fraction(50, 100, initial=0.3, final=0.1) == pytest.approx(0.2)
    assert float(sp.cosine_drop_fraction(jnp.int32(1000), 19650)) == pytest.approx(0.49685, abs=1e-5)


def test_gmp_events_include_the_window_end():
    # GTS MAWPS CV: T = 19250, f = 1000: window [1925, 15400); the original's last prune is at 15000.
    assert sp.gmp_window(19250) == (1925, 15400)
    assert sp.gmp_events(19250, 1000) == list(range(2000, 16000, 1000)) + [15400]
    # CSQA: T = 3000, f = 500: events 500..2000 in [300, 2400), plus 2400
    assert sp.gmp_events(3000, 500) == [500, 1000, 1500, 2000, 2400]
    assert sp.gmp_events(100, 1000) == [80]  # shorter than one period: the final prune alone
    assert sp.gmp_events(100, 10, 0.0, 0.5) == [10, 20, 30, 40, 50]


def test_periodic_events():
    assert sp.periodic_events(10, 3) == [3, 6, 9]
    assert sp.periodic_events(10, 3, end_step=7) == [3, 6]
    assert sp.periodic_events(2, 3) == []


def test_imp_rounds_reach_the_paper_grid():
    assert [round(sp.imp_round_sparsity(k), 6) for k in (1, 7, 8, 10)] == [0.2, 0.790285, 0.832228, 0.892626]
    assert sp.imp_num_rounds(0.0) == 0
    assert sp.imp_num_rounds(0.2) == 1
    assert sp.imp_num_rounds(0.791) == 7  # 0.7903 >= 0.791 - 0.005
    assert sp.imp_num_rounds(0.8325) == 8
    assert sp.imp_num_rounds(0.893) == 10
    with pytest.raises(ValueError, match="sparsity must be in"):
        sp.imp_num_rounds(1.0)
