"""bench/bench_gpu.py runs as it will on the first GPU, here at its tiny size on the CPU: every
table (throughput + memory, largest batch, K processes sharing) is filled and saved, and the
first line says that these are not GPU figures."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_gpu_runs_tiny_on_this_machine(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--tiny", "--arch", "UNet", "--modes", "float32",
           "--batch-sizes", "2", "--max-batch", "4", "--k", "1,2", "--steps", "2", "--warmup", "1",
           "--results-dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(("NO GPU: the same code at a tiny size", "GPU: ")), lines[0]
    assert "patch 32x32, width 4, depth 3" in lines[0]
    out = proc.stdout
    rows = [ln for ln in lines if ln.startswith("| UNet | float32 |")]
    assert len(rows) == 2   # batch 2, and the largest-batch row (one measured size: each costs a trace)
    assert float(rows[0].split("|")[4]) > 0   # images/s
    assert "| UNet | float32 | 4 (stopped at the --max-batch cap 4) |" in out   # doubled 2 -> 4, then capped
    share = [ln for ln in lines if ln.startswith("| UNet | 1 |") or ln.startswith("| UNet | 2 |")]
    assert len(share) == 2 and "failed" not in "".join(share)
    saved = list(tmp_path.glob("bench_gpu_*.md"))
    assert len(saved) == 1 and lines[0] in saved[0].read_text()


def test_bench_gpu_refuses_an_unknown_mode():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--modes", "float64"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == \
        "error: --modes: unknown float64; choose from float32, mixed_float16, xla"
