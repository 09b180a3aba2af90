import sys
from pathlib import Path

# the chain MDP helpers next to these tests (pytest runs with --import-mode=importlib)
sys.path.insert(0, str(Path(__file__).parent))
