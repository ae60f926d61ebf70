"""The README's Python blocks run as written: the quick-start (a run, then one personalized
output, with the real model) from a folder laid out as the clone's root, and the diagnosis."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)


@pytest.mark.slow
def test_the_quick_start_runs_as_written(tmp_path):
    quick_start = next(block for block in _python_blocks() if "run_stages" in block)
    (tmp_path / "tests" / "data").mkdir(parents=True)
    (tmp_path / "tests" / "data" / "pep-titles-mini").symlink_to(ROOT / "tests" / "data" / "pep-titles-mini")
    done = subprocess.run([sys.executable, "-c", quick_start], cwd=tmp_path, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "runs" / "quickstart" / "report.md").exists()
    *_, title, spent = done.stdout.strip().splitlines()
    assert title.strip() and 1 <= int(spent.split()[0]) <= 4        # a title, within the budget


@pytest.mark.slow          # the simulator's diagnosis takes seconds
def test_the_diagnosis_block_runs_as_written(capsys):
    block = next(block for block in _python_blocks() if "ttp.diagnose" in block)
    exec(compile(block, "README.md", "exec"), {})
    collapse, rho, hacked = map(float, capsys.readouterr().out.split()[:3])
    assert collapse == pytest.approx(0.2) and 0 < rho < 1 and hacked > 0     # the planted collapse is found
