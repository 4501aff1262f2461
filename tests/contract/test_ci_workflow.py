"""The CI workflow parses, and every job runs the README's test command or a documented subset of it."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
README_COMMAND = "bash scripts/test.sh"


def workflow() -> dict:
    data = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    assert isinstance(data, dict) and isinstance(data.get("jobs"), dict)
    return data


def job_script(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_every_job_runs_the_suite_or_its_marker_subset() -> None:
    jobs = workflow()["jobs"]
    assert set(jobs) == {"cpu", "metal", "windows", "cuda", "rocm"}
    assert README_COMMAND in (ROOT / "README.md").read_text()
    assert "bash .ci/run" in job_script(jobs["cpu"]) and README_COMMAND in (ROOT / ".ci" / "run").read_text()
    for name in ("metal", "windows"):  # the whole suite, as the README runs it
        assert README_COMMAND in job_script(jobs[name]), name
    for marker in ("cuda", "rocm"):  # GPU runners: the tests carrying their marker (documented in the header)
        assert f"pytest -m {marker} " in job_script(jobs[marker])


def test_each_job_runs_where_it_says() -> None:
    jobs = workflow()["jobs"]
    assert jobs["windows"]["runs-on"] == "windows-latest"
    assert jobs["windows"]["defaults"]["run"]["shell"] == "bash"
    assert jobs["cpu"]["runs-on"] == "ubuntu-latest"
    assert jobs["metal"]["runs-on"].startswith("macos-")
    for job in jobs.values():
        uses = [step["uses"] for step in job["steps"] if "uses" in step]
        assert uses[:2] == ["actions/checkout@v4", "actions/setup-python@v5"]
        assert all(isinstance(step, dict) and ("run" in step or "uses" in step) for step in job["steps"])
