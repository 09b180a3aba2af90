"""Train a critic (ALOE chunk Q ensemble, Cal-QL or IQL of V-GPS, Hume's value-query head).

    python scripts/train_critic.py critic=aloe|calql|iql|vqh data=[<dir>,...] policy_path=<ckpt> out=<dir> \
        [steps=5000 batch_size=256 critic.chunk_len=4 critic.encoder.type=mlp resume=true ...]

Options: configs/train_critic.yaml and configs/critic/<critic>.yaml. The policy bootstraps
the TD target (ALOE, Cal-QL; IQL needs none) and is the VLA a vqh head reads. Checkpoints
land in <out>/checkpoints/<step>/ (``critic_path=<out>`` finds the last one); the held-out
diagnostics in <out>/diagnostics.json and <out>/q_vs_return.png.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra
from omegaconf import DictConfig, OmegaConf

from vla.errors import VLAError


@hydra.main(config_path="../configs", config_name="train_critic", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from critics.train import train_critic

    logging.getLogger("vla").setLevel(logging.INFO)
    logging.getLogger("critics").setLevel(logging.INFO)
    try:
        out = train_critic(OmegaConf.to_container(cfg, resolve=True))
    except VLAError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"trained critic: {out}/checkpoints/last/pretrained_model (diagnostics: {out}/diagnostics.json)")


if __name__ == "__main__":
    main()
