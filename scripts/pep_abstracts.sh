#!/usr/bin/env bash
# The long-form pilot of docs/results.md: pep-abstracts (a title in, an abstract out) and, with
# the same users, queries and pool size, pep-titles beside it: one query per user (52), pools of
# M = 16, both policies; the abstracts with up to 160 new tokens (docs/method.md, "Long
# outputs"), the titles with the title task's 24.  Prints each run's ceiling, reward models and
# diagnosis (ttp run's tables); resumes if interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."
dirs() { .venv/bin/python -c "from ttp.tasks.peps import pep_task_dirs; print(pep_task_dirs()['$1'])"; }
.venv/bin/ttp run --task "$(dirs pep-abstracts)" --out runs/pep-abstracts-pilot --pool-size 16 \
    --max-queries-per-user 1 --max-tokens 160
.venv/bin/ttp run --task "$(dirs pep-titles)" --out runs/pep-titles-pilot --pool-size 16 --max-queries-per-user 1
