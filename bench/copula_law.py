"""The copula per-query law as ``ttp diagnose`` computes it vs the plug-in law, side by side.

1,200 simulated zero-inflated queries (seed 3), pools of 16 and 64.  Prints the time of the
plug-in curve (``copula_curves`` with r̂ plugged in), of the law (the top compression measured
by ``top_compression``, then ``posterior_copula_curves`` at it) with its simulated expectations
computed afresh (cold cache) and reused (warm), and of three separate plug-in curves, one per
Gauss–Hermite node (what sharing the draws saves), each as a ratio to the plug-in curve.  The
nodes share one curve's draws, so what the warm law adds is the measurement of λ and the
posterior (docs/method.md, "Noise in r̂_q" and "Top compression")."""
import time

from ttp.analysis import copula, copula_fit
from ttp.analysis.simulate import SimulationConfig, simulate


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    for m in (16, 64):
        sim = simulate(SimulationConfig(n_users=60, queries_per_user=20, pool_size=m, utility="zero_inflated", seed=3))
        r_hat = copula.copula_correlation(sim.scores, sim.utilities)   # builds the pool size's calibration once
        plug_in = timed(lambda: copula.copula_curves(sim.utilities, r_hat))
        def law():
            compression = copula_fit.top_compression(sim.scores, sim.utilities).compression
            return copula_fit.posterior_copula_curves(sim.scores, sim.utilities, compression=compression)

        copula_fit._simulated_statistics.cache_clear()
        cold = timed(law)
        warm = timed(law)
        three = timed(lambda: [copula.copula_curves(sim.utilities, r_hat) for _ in copula_fit.HERMITE_NODES])
        patterns = copula_fit._simulated_statistics.cache_info().currsize
        print(f"M = {m:2d}, {len(r_hat)} queries, {patterns} tie patterns: plug-in {plug_in:.2f} s; law "
              f"cold {cold:.2f} s ({cold / plug_in:.1f}x), warm {warm:.2f} s ({warm / plug_in:.2f}x); "
              f"three plug-in curves {three:.2f} s ({three / plug_in:.1f}x)")


if __name__ == "__main__":
    main()
