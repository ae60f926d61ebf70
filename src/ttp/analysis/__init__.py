"""Analysis on plain arrays: exact Best-of-N, statistics, the scaling law and its failure modes,
simulation with known truth, and the law as a controller of test-time compute."""
