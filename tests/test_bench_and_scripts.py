"""Every benchmark and script imports cleanly, without running: a name it takes from the package
or from bench/_data.py that no longer exists fails here, not on the day someone runs it."""
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted([*ROOT.glob("bench/*.py"), *ROOT.glob("scripts/*.py")])


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.name}/{p.name}" for p in FILES])
def test_imports_without_running(path, monkeypatch):
    monkeypatch.syspath_prepend(str(path.parent))
    spec = importlib.util.spec_from_file_location(f"_checked_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    assert callable(getattr(module, "main", None)) or path.name.startswith("_")


@pytest.mark.slow
def test_the_gpu_check_runs_end_to_end_on_the_cpu(tiny_model, tmp_path, monkeypatch, capsys):
    """bench/gpu_check.py as a person with a GPU runs it, at fixture sizes on the CPU: every step
    through TTP's own code, one table with the versions."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("_gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    module.main(["--device", "cpu", "--tiny", "--model", str(tiny_model), "--data",
                 str(ROOT / "tests" / "data" / "pep-titles-mini"), "--out", str(tmp_path / "check")])
    printed = capsys.readouterr().out
    for line in ("torch ", "transformers ", "ttp run --backend transformers, end to end", "lm family training",
                 "chunk size 1 ", "chunk size 16 ", "ttp tune from the model folder"):
        assert line in printed, (line, printed)
    assert (tmp_path / "check" / "tuned" / "model.safetensors").exists()


@pytest.mark.slow
def test_the_serving_load_bench_runs_end_to_end(small_run, pep_titles_dir):
    """bench/serve_load.py's default mode on a small finished run: the served requests, the cold
    `ttp generate` and the direct pool it compares them with, all printed."""
    import subprocess

    done = subprocess.run([sys.executable, str(ROOT / "bench" / "serve_load.py"), "--run", str(small_run),
                           "--data", str(pep_titles_dir), "--requests", "2", "--concurrency", "1", "--budget", "2"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for line in ("errors 0", "cold `ttp generate`", "one pool of 2 candidates", "service time per request"):
        assert line in done.stdout, (line, done.stdout)
