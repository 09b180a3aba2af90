"""A LeRobot-trained camera policy post-trained here: the user's path of issue 18, end to end, as JSON.

Every stage is a command a user types (the README's LeRobot section), run as a subprocess with its
exact command line recorded:

1. ``scripts/collect.py``: imperfect expert demonstrations of pick-and-place from two cameras and
   proprioception (``env.obs_mode=pixels``: no object coordinates), one fixed instruction (LeRobot's
   diffusion policy reads no language);
2. ``lerobot-train``: a LeRobot ``DiffusionPolicy`` trained by LeRobot's own training code on that
   dataset as recorded (a small configuration that fits a 2-core CPU; ``--size default`` keeps
   LeRobot's default network, for a GPU);
3. ``scripts/collect.py source=policy intervener=scripted``: rollouts of that policy with the
   scripted stand-in taking over when it strays;
4. ``scripts/train_critic.py``: an ALOE chunk critic on demos and rollouts, with the LeRobot policy;
5. ``scripts/finetune.py``: AWM, APO and the HG-DAgger baseline from the LeRobot checkpoint, on the
   same data, at the policy's own learning rate;
6. ``scripts/evaluate.py``: base, AWM, APO, HG-DAgger and the base re-ranked by the critic on the
   same unseen seeds (``--seed``, default 20000: no collection, ablation or setting used them).

Nothing here was tuned on the evaluation seeds: every option is fixed below before the first run.
A killed run resumes (a stage whose DONE.json exists is skipped).

    python benchmarks/bench_lerobot.py [--work /tmp/bench_lerobot] [--write benchmarks/results/lerobot.json]

Target (issue 18): base at most 60%; AWM or APO at least +20 points over it and ahead of HG-DAgger.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import PY, ROOT, emit, run

TASK = "put the red cube in the bin"
ENV = ["env=pick_place", f"env.task='{TASK}'", "env.obs_mode=pixels", "env.cameras=[front,wrist]",
       "env.image_size=64"]
# LeRobot's diffusion policy, small enough to train on a 2-core CPU (its defaults otherwise: a ResNet-18
# image encoder, random init since nothing downloads here, spatial softmax, DDPM training, DDIM-free sampling)
SIZES = {
    "cpu": ["--policy.down_dims=[64,128,256]", "--policy.n_obs_steps=1", "--policy.horizon=16",
            "--policy.n_action_steps=8", "--policy.crop_shape=[56,56]", "--policy.num_inference_steps=10"],
    "default": ["--policy.crop_shape=[56,56]"],
}


def stage(work: Path, name: str, cmd: list[str], record: dict) -> None:
    """Run one command once (its DONE.json says it finished), logging into <work>/<name>.log."""
    done = work / name / "DONE.json"
    if done.exists():
        record[name] = json.loads(done.read_text())
        return
    (work / name).mkdir(parents=True, exist_ok=True)
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    seconds = run(cmd, work / f"{name}.log")
    record[name] = {"command": shlex.join(cmd), "seconds": round(seconds, 1)}
    done.write_text(json.dumps(record[name]))


def dataset_summary(root: Path) -> dict:
    """Episodes, success and intervention steps of a recorded dataset (its episode journal)."""
    rows = [json.loads(line) for line in (root / "meta" / "vla_episodes.jsonl").read_text().splitlines() if line]
    return {"episodes": len(rows), "success_rate": round(sum(r["success"] for r in rows) / max(1, len(rows)), 3),
            "steps": sum(r["length"] for r in rows), "intervention_steps": sum(r["interventions"] for r in rows)}


def side_by_side(work: Path, todo: list[tuple[str, list[str]]], record: dict, jobs: int) -> None:
    """Independent stages, ``jobs`` at a time (each command runs one torch thread)."""
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        for done in [pool.submit(stage, work, name, cmd, record) for name, cmd in todo]:
            done.result()


def metrics(path: Path) -> dict:
    m = json.loads((path / "metrics.json").read_text())
    return {"success_rate": m["success_rate"], "ci95": m["ci95"], "episodes": m["episodes"],
            "mean_steps": round(m["mean_steps"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/bench_lerobot")
    ap.add_argument("--write", default=None, help="also write the JSON to this file")
    ap.add_argument("--size", choices=sorted(SIZES), default="cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--demos", type=int, default=60)
    ap.add_argument("--base-steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=16, help="LeRobot training and refinement batch")
    ap.add_argument("--rollouts", type=int, default=50)
    ap.add_argument("--refine-steps", type=int, default=400)
    ap.add_argument("--critic-steps", type=int, default=1000)
    ap.add_argument("--episodes", type=int, default=50, help="evaluation episodes")
    ap.add_argument("--seed", type=int, default=20000, help="first evaluation seed (test split)")
    ap.add_argument("--jobs", type=int, default=2, help="independent stages run side by side (2 cores: 2)")
    args = ap.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    demos, rollouts, base = work / "data" / "demos", work / "data" / "rollouts", work / "base"
    stages: dict = {}
    dev = [f"device={args.device}"]

    stage(work, "demos", [PY, "scripts/collect.py", *ENV, "source=expert", f"episodes={args.demos}", "seed=0",
                          "expert.noise=0.01", "expert.hesitation=0.1", "expert.wrong_first_attempt=0.3",
                          f"out={demos}", "video=false", "progress=false"], stages)
    lerobot_train = str(Path(PY).with_name("lerobot-train"))
    stage(work, "base", [lerobot_train, "--policy.type=diffusion", "--dataset.repo_id=local/demos",
                         f"--dataset.root={demos}", f"--output_dir={base / 'run'}", f"--steps={args.base_steps}",
                         f"--batch_size={args.batch_size}", f"--policy.device={args.device}", "--wandb.enable=false",
                         "--policy.push_to_hub=false", "--num_workers=0", f"--save_freq={args.base_steps}",
                         "--log_freq=100", "--policy.pretrained_backbone_weights=null",
                         "--policy.use_group_norm=true", "--seed=0", *SIZES[args.size]], stages)
    policy = base / "run"  # the adapter finds checkpoints/last/pretrained_model in a LeRobot run dir

    def evaluation(name: str, path: Path, *extra: str) -> tuple[str, list[str]]:
        return f"eval_{name}", [PY, "scripts/evaluate.py", *ENV, f"policy_path={path}", *extra,
                                f"episodes={args.episodes}", f"seed={args.seed}", "num_envs=1", "videos=1",
                                f"out={work / 'eval' / name}", *dev]

    stage(work, *evaluation("base", policy), stages)  # first: the base's figure stands if a later stage is cut short
    stage(work, "rollouts", [PY, "scripts/collect.py", *ENV, "source=policy", f"policy_path={policy}",
                             "policy_name=base", "intervener=scripted", f"episodes={args.rollouts}", "seed=1000",
                             f"out={rollouts}", "video=false", "progress=false", *dev], stages)
    data = f"data=[{demos},{rollouts}]"
    critic = [PY, "scripts/train_critic.py", "critic=aloe", data, f"policy_path={policy}", f"out={work / 'critic'}",
              f"steps={args.critic_steps}", "batch_size=64", "critic.n_next=2", f"train.save_every={args.critic_steps}",
              "train.progress=false"]
    refine = [f"steps={args.refine_steps}", f"batch_size={args.batch_size}", "train.lr=1e-4", "train.warmup_steps=50",
              f"train.save_every={args.refine_steps}", "train.progress=false"]
    side_by_side(work, [("critic", critic), *[
        (algo, [PY, "scripts/finetune.py", f"algo={algo}", f"policy_path={policy}", data, f"out={work / algo}",
                *refine, *extra]) for algo, extra in (("awm", ["algo.advantage=mc"]), ("apo", []), ("hg_dagger", []))]],
        stages, args.jobs)
    side_by_side(work, [*[evaluation(name, work / name) for name in ("awm", "apo", "hg_dagger")],
                        evaluation("base_rerank", policy, f"critic_path={work / 'critic'}", "rerank.n=8")],
                 stages, args.jobs)
    results = {name: metrics(work / "eval" / name) for name in ("base", "awm", "apo", "hg_dagger", "base_rerank")}
    base_rate = results["base"]["success_rate"]
    for r in results.values():
        r["vs_base_points"] = round(100 * (r["success_rate"] - base_rate), 1)
    best = max(results["awm"]["success_rate"], results["apo"]["success_rate"])
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    emit({"benchmark": "bench_lerobot", "command": shlex.join([sys.executable, *sys.argv]), "commit": commit,
          "date": time.strftime("%Y-%m-%d"), "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                                          "device": args.device},
          "task": "pick_place", "instruction": TASK, "observations": "front + wrist cameras 64x64, proprioception",
          "policy": f"LeRobot DiffusionPolicy ({args.size} size), trained by lerobot-train",
          "seeds": {"demos": [0, args.demos - 1], "rollouts": [1000, 1000 + args.rollouts - 1],
                    "evaluation (test)": [args.seed, args.seed + args.episodes - 1]},
          "methods": results, "data": {"demos": dataset_summary(demos), "rollouts": dataset_summary(rollouts)},
          "critic_held_out": {k: json.loads((work / "critic" / "diagnostics.json").read_text()).get(k)
                              for k in ("spearman_q", "auroc_q", "ci95", "held_out_episodes")},
          "stages": stages,
          "targets": {"base_at_most_60": base_rate <= 0.6, "awm_or_apo_plus_20": best >= base_rate + 0.2,
                      "ahead_of_hg_dagger": best > results["hg_dagger"]["success_rate"]}}, args.write)


if __name__ == "__main__":
    main()
