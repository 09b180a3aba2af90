"""Test defaults: offline, CPU, software rendering, small thread pools (2-core machines)."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)  # tiny test models: threads cost more than they give

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

# shared helpers next to the tests (tiny_lerobot.py); pytest runs with --import-mode=importlib
sys.path.insert(0, str(Path(__file__).parent))
