"""The main job. Until the end-to-end pipeline lands, it exercises the data layer for real:
it records episodes through the crash-safe writer and reads them back as training chunks."""

import json
import subprocess
import sys
from pathlib import Path

if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "benchmarks/bench_writer.py"), "--episodes", "3"],
                         check=True, capture_output=True, text=True).stdout
    print(json.dumps(json.loads(out), indent=2))
