"""What the benchmarks that drive the project's own entry points share: running one as a subprocess
(exact command recorded by the caller) and printing / writing the figures as JSON.

Imported as ``from common import ...``: a benchmark runs as ``python benchmarks/<name>.py``, which
puts this folder on the import path.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def run(cmd: list[str], log: Path, append: bool = False) -> float:
    """Run ``cmd`` in the repository root (one torch thread, offscreen MuJoCo), output to ``log``;
    returns the wall time in seconds. A failure ends the benchmark, naming the command and the log."""
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    with open(log, "a" if append else "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {shlex.join(cmd)}; see {log}")
    return time.perf_counter() - t0


def emit(results: dict, write: str | None) -> None:
    """Print the figures as JSON, and also write them to ``write`` when given."""
    text = json.dumps(results, indent=1)
    print(text)
    if write:
        Path(write).parent.mkdir(parents=True, exist_ok=True)
        Path(write).write_text(text + "\n")
