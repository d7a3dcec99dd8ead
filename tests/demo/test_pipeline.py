"""The quick variant of `make demo`'s pipeline, end to end, and its reruns."""
import json
import os
import time

from configs import demo_cpu
from distill_jax.demo import pipeline


def test_quick_pipeline_runs_every_stage_and_reports_every_arm(tmp_path):
    config = demo_cpu.get_config()
    config.quick = True
    config.quick_settings.output_dir = str(tmp_path / "demo")
    results = pipeline.run(config)
    out = tmp_path / "demo"
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["accuracy"] == results["accuracy"]
    # Every arm is either trained and evaluated, or reported as skipped with a reason.
    for arm in pipeline.ARMS:
        assert (arm in results["accuracy"]) != (arm in results["skipped_arms"]), arm
    assert "teacher" in results["accuracy"]
    for name, acc in results["accuracy"].items():
        assert 0.0 <= acc <= 1.0
        summary = json.loads((out / "eval" / name / "summary.json").read_text())
        assert summary["problems"] == 20 and summary["pass@1"] == acc
    assert results["training_examples"]["unfiltered"] == 40 * 2
    stages = {s["name"]: s for s in results["filter_stages"]}
    assert stages["decontaminate"]["in"] == 80
    assert os.path.getsize(out / "results.png") > 10_000
    assert "| teacher |" in (out / "results.md").read_text()
    for arm in results["curves"]:
        assert len(results["curves"][arm]) == 4            # 20 steps, logged every 5
    # A rerun reuses every finished stage.
    start = time.monotonic()
    again = pipeline.run(config)
    assert again["accuracy"] == results["accuracy"]
    assert time.monotonic() - start < 30
