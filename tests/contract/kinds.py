"""The world of the contract suite: one camera task, its data, a critic, and one checkpoint per policy kind.

Every kind is sized for ``reach`` with a 32x32 front camera and proprioception (what a LeRobot user's
policy reads), and saved where a user's checkpoint would be: our flow and diffusion VLA through
``save_pretrained``, LeRobot's diffusion, pi0, pi0.5 and SmolVLA as ``lerobot-train`` writes them
(tests/tiny_lerobot.py). pi0 and pi0.5 are toy-sized by patches that stay active for the module, so
they run in-process only. Models are untrained: the wiring is under test, not skill.
"""

from __future__ import annotations

from pathlib import Path

# The env every command sees (and a robot stand-in with the same observations).
TASK = "reach"
ENV = ["env.obs_mode=both", "env.cameras=[front]", "env.image_size=32", "env.max_steps=8"]
ENV_KWARGS = {"obs_mode": "both", "cameras": ["front"], "image_size": 32, "max_steps": 500}
ARM = {"type": "sim", "env": TASK, "fps": 50, "env_kwargs": ENV_KWARGS, "limits": {"max_step": 0.2}}
OURS = ("flow", "diffusion")
LEROBOT = ("lerobot_diffusion", "lerobot_pi0", "lerobot_pi05", "lerobot_smolvla")
KINDS = OURS + LEROBOT
TINY_VLA = {"d_model": 32, "n_heads": 2, "expert_layers": 1, "prefix_layers": 0, "state_hidden": 32,
            "expert_width": 32, "vision": {"channels": [4, 8], "grid": 2}, "text": {"type": "bytes", "layers": 0}}


def compose(config: str, *overrides: str) -> dict:
    from policies.pipeline import compose_stage

    return compose_stage(config, list(overrides))


def data_arg(world: dict) -> str:
    return f"data=[{world['demos']},{world['rollouts']}]"


def checkpoint(world: dict, kind: str) -> Path:
    return Path(world[kind])
