"""Fixtures of the contract suite (the world it runs in: contract/kinds.py)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from contract.kinds import ENV, OURS, TASK, TINY_VLA


@pytest.fixture(scope="package")
def world(tmp_path_factory) -> dict:
    """{"demos", "rollouts": datasets, "critic": an ALOE checkpoint, <kind>: its checkpoint dir}."""
    pytest.importorskip("lerobot")
    import tiny_lerobot

    from critics import build_critic
    from policies import build_policy
    from policies.pipeline import _collect
    from vla.data import ChunkDataset, compute_stats

    root = tmp_path_factory.mktemp("contract")
    world: dict = {"root": root, "demos": root / "demos", "rollouts": root / "rollouts"}
    torch.set_num_threads(1)
    _collect({"episodes": 2, "task": TASK, "env_overrides": ENV, "seed": 0}, world["demos"], "expert", ["video=false"])
    data = ChunkDataset([world["demos"]], chunk_len=4)
    features, stats = data.features, compute_stats(data)
    ours = {"observation.state": tuple(features["observation.state"]),
            "observation.images.front": tuple(features["observation.images.front"]), "action": tuple(features["action"])}

    for head in OURS:
        torch.manual_seed(0)
        cfg = {"head": head, "chunk_len": 4, "execute_steps": 2, "model": TINY_VLA, "flow": {"num_steps": 2},
               "diffusion": {"num_train_timesteps": 20, "num_inference_steps": 2}}
        build_policy(cfg, features, stats).save_pretrained(root / head)
        world[head] = root / head
    lstats = tiny_lerobot.lerobot_stats(stats, ours)
    world["lerobot_diffusion"] = tiny_lerobot.build_diffusion(ours, lstats, root / "lerobot_diffusion",
                                                              num_train_timesteps=20, num_inference_steps=2)
    world["lerobot_smolvla"] = tiny_lerobot.build_smolvla(ours, lstats, root / "lerobot_smolvla", root)
    tok = root / "pi_tokenizer"
    tiny_lerobot.tokenizer_dir(tok)
    with contextlib.ExitStack() as patches:
        for kind in ("pi0", "pi05"):
            patches.enter_context(tiny_lerobot.pi_patches(kind, tok))
            world[f"lerobot_{kind}"] = tiny_lerobot.build_pi(kind, ours, lstats, root / f"lerobot_{kind}")
        world["act"] = tiny_lerobot.build_act(ours, lstats, root / "act")
        world["ours"] = ours
        world["lerobot_stats"] = lstats

        # the critic every kind is re-ranked and refined with (it reads the state; 2-step chunks fit all)
        torch.manual_seed(0)
        critic = {"type": "aloe", "chunk_len": 2, "ensemble": 2, "hidden": [16], "n_next": 1,
                  "encoder": {"type": "mlp", "dim": 16}}
        state_only = {"observation.state": features["observation.state"], "action": features["action"]}
        build_critic(critic, state_only, stats).save_pretrained(root / "critic")
        world["critic"] = root / "critic"
        # intervened rollouts of our flow policy: what APO and HG-DAgger learn from
        _collect({"episodes": 2, "task": TASK, "env_overrides": ENV, "seed": 100}, world["rollouts"], "policy",
                 [f"policy_path={world['flow']}", "intervener=scripted", "scripted.patience=1", "video=false"])
        yield world


