#!/usr/bin/env bash
# The pep-titles experiment of docs/results.md: 296 queries (a seeded subset of at most 6 per
# user, 52 users; the user split leaves 120 test queries), pools of M = 16, both policies.
# Prints oracle/random ROUGE-L at N = 1, 4, 16, every reward model and selection rule on the
# test users, and each one's four quantities and law errors; then the zero-shot scorers, the
# comparison of reward-model families, the allocation probes and the copula probes (shape;
# posterior and top compression).  Resumes if interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."
# the task folder: the first argument, by default the pep-titles set ttp derives from its PEP records
DATA="${1:-$(.venv/bin/python -c 'from ttp.tasks.peps import pep_task_dirs; print(pep_task_dirs()["pep-titles"])')}"
.venv/bin/ttp run --task "$DATA" --out runs/pep-titles --pool-size 16 --max-queries-per-user 6
# the zero-shot scorers (likelihood, pmi, judge, profile_similarity) on the held-out pools
.venv/bin/ttp zero-shot runs/pep-titles
# every reward-model family (hand features, the policy's hidden states, the MiniLM cross-encoder)
# with each head and rule, on the same held-out users: one comparison table per policy
.venv/bin/ttp compare runs/pep-titles
# what the online stopping rule could learn of each query's calibration from its draws
.venv/bin/python scripts/allocation_probes.py runs/pep-titles
# the copula law with other copula shapes, and which one the pools' likelihood prefers
.venv/bin/python scripts/copula_families.py runs/pep-titles
# the copula per-query law with each pool's measured correlation plugged in, averaged over its
# posterior, and with the top compression as well (the law ttp diagnose reports)
.venv/bin/python scripts/copula_posterior.py runs/pep-titles
