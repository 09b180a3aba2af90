"""The main job on a tiny config: every stage runs, the report is written, and a second run resumes."""

import json
import os
import shutil
import time

import pytest

from policies.pipeline import METHODS, Run, compose_stage, run_pipeline
from vla.errors import VLAError


def test_tiny_pipeline_runs_end_to_end_and_resumes(tmp_path):
    cfg = compose_stage("demo", ["experiment=tiny", f"out={tmp_path / 'run'}"])
    report = run_pipeline(cfg)
    run = tmp_path / "run"
    text = report.read_text()
    assert set(cfg["eval"]["methods"]) <= set(METHODS)
    for method in cfg["eval"]["methods"]:
        metrics = json.loads((run / "eval" / method / "metrics.json").read_text())
        assert metrics["episodes"] == 2 and 0.0 <= metrics["success_rate"] <= 1.0
        assert metrics["ci95"][0] <= metrics["success_rate"] <= metrics["ci95"][1]
    assert "| BC base |" in text and "| APO |" in text and "dual system" in text
    rollouts = json.loads((run / "data/rollouts/DONE.json").read_text())
    assert rollouts["episodes"] == 2 and "| base rollouts, scripted intervener | 2 |" in text
    for png in ("success_by_method.png", "learning_curves.png", "critic/q_vs_return.png"):
        assert (run / png).stat().st_size > 0
    assert list((run / "eval/base").glob("*.gif"))

    # a killed run resumes: finished stages are skipped, a missing one is redone
    before = (run / "base/DONE.json").read_text()
    shutil.rmtree(run / "eval" / "apo")
    run_pipeline(cfg)
    assert (run / "base/DONE.json").read_text() == before
    assert (run / "eval/apo/metrics.json").exists()


def test_independent_stages_run_side_by_side_and_failures_are_reported(tmp_path):
    run = Run(tmp_path)

    def meets(other: str, value: int):
        """Writes its flag, then waits for the other stage's: only side by side do both finish."""
        def fn(p):
            (tmp_path / f"{p.name}.flag").write_text(str(os.getpid()))
            deadline = time.monotonic() + 30
            while not (tmp_path / f"{other}.flag").exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{other} never ran alongside {p.name}")
                time.sleep(0.01)
            return {"v": value}
        return fn

    def boom(p):
        raise RuntimeError("this stage breaks")

    with pytest.raises(VLAError, match="bad failed"):
        run.stages([("a", meets("b", 1)), ("b", meets("a", 2)), ("bad", boom)], workers=2)
    assert json.loads((tmp_path / "a/DONE.json").read_text())["v"] == 1
    assert json.loads((tmp_path / "b/DONE.json").read_text())["v"] == 2
    assert not (tmp_path / "bad/DONE.json").exists()
    assert str(os.getpid()) not in {(tmp_path / f"{n}.flag").read_text() for n in "ab"}  # forked workers

    # run again: the finished stages are skipped, the failed one is redone
    results = run.stages([("a", boom), ("b", boom), ("bad", lambda p: {"v": 3})], workers=2)
    assert [results[n]["v"] for n in ("a", "b", "bad")] == [1, 2, 3]
