"""Every Hydra config composes, every option of every group composes into a script config that uses it,
and every ``_target_`` in them instantiates."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GROUPS = ("env", "policy", "critic", "algo", "robot", "deploy", "experiment")
PRIMARY = sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def _groups_of(primary: str) -> set[str]:
    defaults = OmegaConf.load(CONFIGS / f"{primary}.yaml").get("defaults", []) or []
    out = set()
    for d in defaults:
        if isinstance(d, DictConfig | dict):
            for k in d:
                out.add(str(k).removeprefix("override ").split("@")[0].strip())
    return out


def _compose(primary: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name=primary, overrides=overrides)


def _targets(node, path="cfg"):
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for k, v in node.items_ex(resolve=False) if hasattr(node, "items_ex") else node.items():
            yield from _targets(v, f"{path}.{k}")
    elif isinstance(node, ListConfig):
        for i, v in enumerate(node):
            yield from _targets(v, f"{path}[{i}]")


def test_groups_exist():
    for group in GROUPS:
        assert (CONFIGS / group).is_dir(), f"configs/{group}/ missing"


OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONFIGS / g).glob("*.yaml"))]


@pytest.mark.parametrize("primary", PRIMARY)
def test_primary_config_composes(primary):
    cfg = _compose(primary, ["+out=/tmp/x"] if "out" not in OmegaConf.load(CONFIGS / f"{primary}.yaml") else [])
    for where, node in _targets(cfg):
        assert instantiate(node) is not None, where


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}/{o}" for g, o in OPTIONS])
def test_every_group_option_composes(group, option):
    users = [p for p in PRIMARY if group in _groups_of(p)]
    if not users:  # a group no script selects yet: the file must still be valid YAML
        cfg = OmegaConf.load(CONFIGS / group / f"{option}.yaml")
    else:
        cfg = _compose(users[0], [f"{group}={option}"])
        text = (CONFIGS / group / f"{option}.yaml").read_text()
        if "@package _global_" in text:  # merged at the top level (experiments)
            own = OmegaConf.load(CONFIGS / group / f"{option}.yaml")
            assert all(k in cfg for k in own if k != "defaults"), f"{group}/{option} keys missing"
        else:
            assert group in cfg, f"{users[0]}.yaml composed without its {group} group"
    OmegaConf.to_container(cfg, resolve=False)
    for where, node in _targets(cfg):
        assert instantiate(node) is not None, where


def test_policy_reads_the_state_layout_of_the_env_it_trains_on():
    with_env = OmegaConf.to_container(_compose("train", ["env=pick_place", "data=[x]", "out=y"]), resolve=True)
    assert with_env["policy"]["model"]["state_layout"] == [8, 3]
    without = OmegaConf.to_container(_compose("train", ["data=[x]", "out=y"]), resolve=True)
    assert without["policy"]["model"]["state_layout"] is None
    import sim

    assert sim.env_options(with_env["env"])[0] == "pick_place"  # the policy's key is not an env option
    env = sim.make_from_config(with_env["env"])
    assert env.observation_space["observation.state"].shape == (8 + 3 * 3,)
    env.close()
