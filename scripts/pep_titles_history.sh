#!/usr/bin/env bash
# Reward models that learn from each user's own history, on the pep-titles run of
# docs/results.md (296 queries, at most 6 per user; 120 test queries; pools of M = 16): the
# run's sampling and utilities, then history pools of 8 for 4 profile items of every user
# (held-out users included, none a held-out query's record), every stage after them, and the
# learning curve of the history RMs over 0 to 4 items per user (share of the oracle gain at
# N = 16, and expected improvement's samples to match uniform N = 8).  Resumes if interrupted;
# a copy of runs/pep-titles made by scripts/pep_titles.sh skips its sampling.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-$(.venv/bin/python -c 'from ttp.tasks.peps import pep_task_dirs; print(pep_task_dirs()["pep-titles"])')}"
OUT=runs/pep-titles-history
# the later stages run once, after the history pools
.venv/bin/ttp run --task "$DATA" --out "$OUT" --pool-size 16 --max-queries-per-user 6 \
    --stages sample,utilities,curves
time .venv/bin/ttp history "$OUT" --items-per-user 4 --pool-size 8
.venv/bin/ttp learning-curve "$OUT" --items 0,1,2,3,4
