"""The main job on a tiny config: every stage runs, the report is written, and a second run resumes."""

import json
import shutil

from policies.pipeline import METHODS, compose_stage, run_pipeline


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
