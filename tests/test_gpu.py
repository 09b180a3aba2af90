"""The models on a CUDA device: same numbers as on the CPU, training steps, re-ranking, the dual system.

Skipped without a GPU (CI has none); run with ``pytest -m gpu tests/test_gpu.py`` where one is.
"""

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "critics"))  # the chain MDP of the critic tests
from chain import TASK_TEXT, Chain  # noqa: E402

from critics import build_critic  # noqa: E402
from critics.rerank import RerankConfig, Reranker  # noqa: E402
from policies import build_policy  # noqa: E402
from policies.apo import APOLoss  # noqa: E402
from policies.awm import AWMLoss  # noqa: E402
from policies.hume import DualSystemAgent, DualSystemConfig  # noqa: E402
from vla.types import to_device  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = "cuda"
H, DA = 4, 1
TINY = {"d_model": 32, "n_heads": 2, "expert_layers": 2, "expert_width": 16, "prefix_layers": 1,
        "state_hidden": 32, "vision": {"channels": [8, 16], "grid": 2}, "text": {"max_len": 32}}
MDP = Chain()
FEATURES = {**MDP.features(), "observation.images.top": (3, 16, 16)}


@pytest.fixture(autouse=True)
def exact_matmuls():
    # compare CPU and GPU numbers without TF32's 10-bit mantissa
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def policy_(head: str, seed: int = 0):
    torch.manual_seed(seed)
    p = build_policy({"head": head, "chunk_len": H, "model": TINY, "flow": {"num_steps": 4},
                      "diffusion": {"num_inference_steps": 4}}, {**FEATURES, "action": (DA,)}, MDP.stats())
    with torch.no_grad():  # away from adaLN-Zero's zero init, so that every input reaches the output
        for q in p.expert.parameters():
            q.add_(torch.randn_like(q) * 0.1)
    return p


def batch_(B: int = 8, seed: int = 1) -> dict:
    b = MDP.random_batch(B, H, np.random.default_rng(seed))
    g = torch.Generator().manual_seed(seed)
    b["observation.images.top"] = torch.rand(B, 3, 16, 16, generator=g)
    b["next.observation.images.top"] = torch.rand(B, 3, 16, 16, generator=g)
    b["mc_return"] = torch.randn(B, generator=g)
    b["label.human"] = torch.arange(B) % 3 == 0
    b["label.pre_takeover"] = torch.arange(B) % 3 == 1
    b["source"] = ["policy:base"] * (B // 2) + ["demo"] * (B - B // 2)
    return b


@pytest.mark.parametrize("head", ["flow", "diffusion"])
def test_policy_on_cuda_gives_the_cpu_numbers_and_trains(head):
    cpu = policy_(head).eval()
    gpu = copy.deepcopy(cpu).to(CUDA)
    batch = batch_()
    g = torch.Generator().manual_seed(3)
    noise, t = torch.randn(8, H, DA, generator=g), torch.rand(8, generator=g)
    with torch.no_grad():
        want = cpu.loss(batch, reduction="none", noise=noise, t=t)
        got = gpu.loss(to_device(batch, CUDA), reduction="none", noise=noise.to(CUDA), t=t.to(CUDA))
        torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-5)
        sample_noise = torch.randn(8, 3, H, DA, generator=g)
        want = cpu.sample(cpu.encode(batch), n=3, noise=sample_noise)
        got = gpu.sample(gpu.encode(to_device(batch, CUDA)), n=3, noise=sample_noise.to(CUDA))
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)

    gpu.train()
    opt = torch.optim.Adam(gpu.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in gpu.parameters()]
    for _ in range(3):
        loss = gpu.loss(to_device(batch, CUDA))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss) and all(p.device.type == "cuda" for p in gpu.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, gpu.parameters(), strict=True))


@pytest.mark.parametrize("kind", ["aloe", "calql", "iql"])
def test_critic_on_cuda_gives_the_cpu_q_and_trains(kind):
    policy = policy_("flow").to(CUDA).eval()
    torch.manual_seed(0)
    cpu = build_critic({"type": kind, "chunk_len": H, "hidden": [32], "n_next": 2, "encoder": {"dim": 16}},
                       FEATURES | {"action": (DA,)}, MDP.stats()).eval()
    gpu = copy.deepcopy(cpu).to(CUDA)
    batch = batch_()
    chunks = torch.randn(8, 5, H, DA)
    with torch.no_grad():
        torch.testing.assert_close(gpu.q(to_device(batch, CUDA), chunks.to(CUDA)).cpu(), cpu.q(batch, chunks),
                                   rtol=1e-4, atol=1e-5)
    gpu.train()
    opt = torch.optim.Adam([p for p in gpu.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(3):
        loss, logs = gpu.loss(to_device(batch, CUDA), policy)
        opt.zero_grad()
        loss.backward()
        opt.step()
        gpu.update_target()
    assert torch.isfinite(loss) and all(torch.isfinite(torch.as_tensor(v)).all() for v in logs.values())


def test_awm_and_apo_steps_on_cuda():
    torch.manual_seed(0)
    critic = build_critic({"type": "aloe", "chunk_len": H, "hidden": [32], "encoder": {"dim": 16}},
                          FEATURES | {"action": (DA,)}, MDP.stats()).to(CUDA).eval()
    for name, make in [("awm", lambda p: AWMLoss(p, {"advantage": "critic"}, critic=critic)),
                       ("apo", lambda p: APOLoss(p, {}))]:
        policy = policy_("flow").to(CUDA)
        loss_fn = make(policy)
        opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
        loss, logs = loss_fn(policy, to_device(batch_(), CUDA))
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss), name
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in policy.parameters()), name


def test_rerank_and_dual_system_on_cuda():
    policy = policy_("flow").to(CUDA).eval()
    torch.manual_seed(0)
    critic = build_critic({"type": "aloe", "chunk_len": H, "hidden": [32], "encoder": {"dim": 16}},
                          FEATURES | {"action": (DA,)}, MDP.stats()).to(CUDA).eval()
    obs = {"observation.state": MDP.one_hot([1, 2]).to(CUDA), "task": [TASK_TEXT] * 2,
           "observation.images.top": torch.rand(2, 3, 16, 16, device=CUDA)}
    chunks, decisions = Reranker(policy, critic, RerankConfig(n=16)).choose(obs)
    assert chunks.shape == (2, H, DA) and chunks.device.type == "cuda" and torch.isfinite(chunks).all()
    # the pick is the candidate with the best pessimistic score
    assert all(d["feasible"] == 16 and 0 <= d["chosen"] < 16 for d in decisions)

    system1 = policy_("flow", seed=1).to(CUDA).eval()
    agent = DualSystemAgent(policy, critic, system1, DualSystemConfig(s1_every=1, s2_every=2, n=4), device=CUDA)
    step = {"observation.state": MDP.one_hot([1])[0].numpy(), "task": TASK_TEXT,
            "observation.images.top": np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)}  # HWC, as envs give
    actions = np.stack([agent.act(step) for _ in range(5)])
    assert actions.shape == (5, DA) and np.isfinite(actions).all()
    assert agent.s2_plans >= 2 and agent.s1_plans >= 1
