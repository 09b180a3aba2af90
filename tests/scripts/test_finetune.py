"""scripts/finetune.py end to end: every algorithm, both heads and the LeRobot adapter, on a tiny dataset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from policies.baselines import human_steps_only, select_frames
from policies.finetune import ALGOS, finetune
from vla.data import ChunkDataset, EpisodeWriter, compute_stats
from vla.errors import ConfigError, DataError, ShapeError

REPO = Path(__file__).resolve().parents[2]
DS, DA, IMG = 3, 2, 16
TASKS = ["pick the red cube", "pick the blue cube"]
# (source, success, intervention steps, length)
EPISODES = [
    ("demo", True, (), 10),
    ("policy:base", True, (4, 5, 6), 12),
    ("policy:base", False, (6, 7), 12),
    ("policy:base", False, (), 8),
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finetune") / "data"
    spec = {"observation.state": (DS,), "observation.images.front": (IMG, IMG, 3)}
    rng = np.random.default_rng(0)
    with EpisodeWriter(root, fps=10, obs_spec=spec, action_dim=DA, use_videos=False) as w:
        for ep, (source, success, steps, n) in enumerate(EPISODES):
            task = TASKS[ep % 2]
            for i in range(n):
                state = rng.normal(size=DS).astype(np.float32)
                obs = {"observation.state": state, "task": task,
                       "observation.images.front": rng.integers(0, 255, (IMG, IMG, 3), dtype=np.uint8)}
                action = np.array([state[0] + ep % 2, i / n], np.float32)
                human = i in steps
                last = i == n - 1
                w.add_step(obs, action=action, policy_action=action + 0.5 if human else None, intervention=human,
                           reward=float(last and success), success=last and success, done=last)
            w.end_episode(source, seed=ep)
    return root


@pytest.fixture(scope="module")
def dataset(data_dir) -> ChunkDataset:
    return ChunkDataset([data_dir], chunk_len=4, intervention_window=3)


def _vla_checkpoint(dataset, head: str, directory: Path) -> Path:
    from policies import build_policy

    torch.manual_seed(0)
    cfg = {"head": head, "chunk_len": 4, "observation_keys": ["observation.state"],
           "model": {"d_model": 32, "n_heads": 2, "prefix_layers": 0, "expert_layers": 1, "state_hidden": 32,
                     "text": {"max_len": 16}},
           "flow": {"num_steps": 2}, "diffusion": {"num_train_timesteps": 10, "num_inference_steps": 2}}
    build_policy(cfg, dataset.features, compute_stats(dataset)).save_pretrained(directory)
    return directory


def _lerobot_checkpoint(dataset, directory: Path) -> Path:
    """A tiny LeRobot diffusion policy, saved through the adapter (LeRobot's files + vla_adapter.json)."""
    pytest.importorskip("lerobot")
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.factory import make_pre_post_processors

    from policies.lerobot_adapter import LeRobotChunkPolicy

    torch.manual_seed(0)
    cfg = DiffusionConfig(
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (DS,)),
                        "observation.images.front": PolicyFeature(FeatureType.VISUAL, (3, IMG, IMG))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (DA,))},
        n_obs_steps=1, horizon=4, n_action_steps=2, down_dims=(8, 16), kernel_size=3, n_groups=4,
        diffusion_step_embed_dim=8, pretrained_backbone_weights=None, use_group_norm=True,
        spatial_softmax_num_keypoints=4, num_train_timesteps=10, num_inference_steps=2, crop_shape=None,
        device="cpu")
    stats = {k: {s: torch.tensor(v) for s, v in st.items()} for k, st in compute_stats(dataset).items()}
    stats["observation.images.front"] = {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.25),
                                         "min": torch.zeros(3, 1, 1), "max": torch.ones(3, 1, 1)}
    policy = DiffusionPolicy(cfg)
    pre, post = make_pre_post_processors(policy.config, dataset_stats=stats)
    for part in (policy, pre, post):
        part.save_pretrained(directory / "raw")
    LeRobotChunkPolicy.from_pretrained(directory / "raw").save_pretrained(directory / "adapter")
    return directory / "adapter"


@pytest.fixture(scope="module")
def checkpoints(dataset, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "flow": _vla_checkpoint(dataset, "flow", root / "flow"),
        "diffusion": _vla_checkpoint(dataset, "diffusion", root / "diffusion"),
        "lerobot": _lerobot_checkpoint(dataset, root / "lerobot"),
    }


@pytest.fixture(scope="module")
def critic_dir(dataset, tmp_path_factory) -> Path:
    from critics import build_critic

    torch.manual_seed(0)
    features = {"observation.state": (DS,), "action": (DA,)}
    cfg = {"type": "aloe", "chunk_len": 2, "ensemble": 2, "hidden": [16], "n_next": 1, "encoder": {"dim": 16}}
    directory = tmp_path_factory.mktemp("critic") / "aloe"
    build_critic(cfg, features, compute_stats(dataset)).save_pretrained(directory)
    return directory


def _config(algo: str, policy_path, data, out, *extra: str) -> dict:
    """configs/finetune.yaml composed with overrides, as the script sees it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    overrides = [f"algo={algo}", f"policy_path={policy_path}", f"data=[{data}]", f"out={out}", "steps=2",
                 "batch_size=4", "train.warmup_steps=0", "train.progress=false", "train.log_every=1", *extra]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return OmegaConf.to_container(compose("finetune", overrides=overrides), resolve=True)


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


# -- every algorithm, both heads, the LeRobot adapter -----------------------------------
def _cases():
    """Every (algorithm, policy) pair. The default run keeps every algorithm on the flow head and
    the objectives built on the implicit likelihood (AWM, APO) on the other two; plain BC on
    those (and AWM with a critic on the LeRobot policy, whose ResNet makes each run ~4 s) is slow."""
    for policy in ("flow", "diffusion", "lerobot"):
        for algo in (*ALGOS, "awm_critic"):
            fast = policy == "flow" or algo in ("awm", "apo") or (algo == "awm_critic" and policy == "diffusion")
            yield pytest.param(algo, policy, id=f"{algo}-{policy}", marks=() if fast else pytest.mark.slow)
    yield pytest.param("awm_trust", "flow", id="awm_trust-flow")  # the trailing copy: on_step and extra state


@pytest.mark.parametrize(("algo", "policy"), list(_cases()))
def test_every_algorithm_trains_and_saves_a_loadable_policy(algo, policy, checkpoints, critic_dir, data_dir, tmp_path):
    from policies import load_policy

    extra = {"awm_critic": [f"critic_path={critic_dir}", "algo.advantage=critic"],
             "awm_trust": ["algo.trust_beta=0.1"]}.get(algo, [])
    name = algo.split("_")[0] if algo.startswith("awm") else algo
    out = finetune(_config(name, checkpoints[policy], data_dir, tmp_path / "out", *extra))
    final = out / "checkpoints" / "last" / "pretrained_model"
    state = out / "checkpoints" / "last" / "training_state"
    assert (state / "extra_state.pt").is_file() == (algo == "awm_trust")
    tuned = load_policy(out)
    base = load_policy(checkpoints[policy])
    assert (tuned.chunk_len, tuned.action_dim) == (base.chunk_len, base.action_dim)
    before, after = _weights(checkpoints[policy]), _weights(final)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before), "fine-tuning left every weight unchanged"


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
SCRIPT = [sys.executable, str(REPO / "scripts" / "finetune.py")]


def test_the_script_runs(checkpoints, data_dir, tmp_path):
    args = ["algo=apo", f"policy_path={checkpoints['flow']}", f"data=[{data_dir}]", f"out={tmp_path / 'out'}",
            "steps=2", "batch_size=4", "train.warmup_steps=0", "train.progress=false"]
    ok = subprocess.run([*SCRIPT, *args], capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (tmp_path / "out" / "checkpoints" / "last" / "pretrained_model" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # hydra writes nothing into the working directory


@pytest.mark.slow
def test_the_script_reports_errors_in_one_line(data_dir, tmp_path):
    args = ["algo=bc", f"policy_path={tmp_path / 'nowhere'}", f"data=[{data_dir}]", f"out={tmp_path / 'out'}"]
    bad = subprocess.run([*SCRIPT, *args], capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("error:") and "nowhere" in bad.stderr


# -- config and data errors --------------------------------------------------------------
def test_bad_options_are_clear_errors(checkpoints, critic_dir, data_dir, tmp_path):
    with pytest.raises(ConfigError, match="unknown option"):
        finetune(_config("awm", checkpoints["flow"], data_dir, tmp_path / "a", "+algo.temperature=1"))
    with pytest.raises(ConfigError, match="critic_path"):
        finetune(_config("awm", checkpoints["flow"], data_dir, tmp_path / "b", "algo.advantage=critic"))
    with pytest.raises(ConfigError, match="policy_path"):
        finetune(_config("bc", "???", data_dir, tmp_path / "c"))


def test_a_critic_with_longer_chunks_than_the_policy_is_refused(dataset, checkpoints, data_dir, tmp_path):
    from critics import build_critic

    cfg = {"type": "aloe", "chunk_len": 6, "hidden": [8], "encoder": {"dim": 8}}
    build_critic(cfg, {"observation.state": (DS,), "action": (DA,)}, compute_stats(dataset)).save_pretrained(
        tmp_path / "long")
    with pytest.raises(ShapeError, match="chunks of 6"):
        finetune(_config("awm", checkpoints["flow"], data_dir, tmp_path / "out", f"critic_path={tmp_path / 'long'}"))


# -- the baselines' data selection -------------------------------------------------------
def test_baselines_select_their_frames(dataset):
    f = dataset.frames
    n_demo, n_won = EPISODES[0][3], EPISODES[1][3]
    assert len(select_frames("bc", f)) == len(dataset)
    filtered = select_frames("filtered_bc", f)
    assert filtered.tolist() == list(range(n_demo + n_won))  # the two successful episodes
    hg = select_frames("hg_dagger", f)
    human = [n_demo + 4, n_demo + 5, n_demo + 6, n_demo + n_won + 6, n_demo + n_won + 7]
    assert hg.tolist() == list(range(n_demo)) + human
    with pytest.raises(DataError, match="successful"):
        select_frames("filtered_bc", {**f, "episode_success": np.zeros(len(dataset), bool)})


def test_hg_dagger_learns_only_the_intervener_steps_of_a_chunk(dataset):
    from torch.utils.data import default_collate

    n_demo = EPISODES[0][3]
    items = [dataset[n_demo + 5], dataset[0]]  # inside the takeover at 4..6; a demo chunk
    batch = {k: (default_collate([it[k] for it in items]) if not isinstance(items[0][k], str) else
                 [it[k] for it in items]) for k in items[0]}
    masked = human_steps_only(batch)
    # steps 5, 6 were the intervener's, 7, 8 the policy's again; the demo chunk stays whole
    assert masked["action_is_pad"].tolist() == [[False, False, True, True], [False] * 4]
    # our policies read the loss mask (padding past an episode's end is learnt as holding)
    assert masked["action_loss_mask"].tolist() == [[True, True, False, False], [True] * 4]
