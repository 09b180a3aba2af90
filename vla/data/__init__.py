"""The data layer: episodes in LeRobot v3 datasets, chunks for training, stats, returns, labels."""

import logging

from vla.data.batch import obs_to_batch
from vla.data.chunks import ChunkDataset, make_dataloader, open_lerobot
from vla.data.returns import (
    mc_returns,
    pre_takeover_mask,
    sparse_negative_rewards,
    takeover_penalties,
    takeover_starts,
)
from vla.data.stats import Normalizer, compute_stats, load_stats, save_stats
from vla.data.writer import EpisodeWriter, read_journal, repair

# torchcodec cannot load without system FFmpeg libraries; LeRobot then falls back to PyAV,
# which is fine here, but first logs a traceback per FFmpeg version on every import.
logging.getLogger("lerobot.utils.import_utils").setLevel(logging.ERROR)

__all__ = [
    "ChunkDataset",
    "EpisodeWriter",
    "Normalizer",
    "compute_stats",
    "load_stats",
    "make_dataloader",
    "mc_returns",
    "obs_to_batch",
    "open_lerobot",
    "pre_takeover_mask",
    "read_journal",
    "repair",
    "save_stats",
    "sparse_negative_rewards",
    "takeover_penalties",
    "takeover_starts",
]
