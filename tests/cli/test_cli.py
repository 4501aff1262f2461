"""The `corral` command as a user runs it: real processes, real server, exit codes and output."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from corral.errors import InsufficientMemory
from corral.hookspecs import Device, Estimate, LoadSpec
from fakes import FakeBackend, fake_plugins, write_fake_model
from serverproc import free_port

MODEL = "smollm2:135m"
SHORT = "smollm2-short"  # the same weights with short greedy answers, so the CLI tests stay quick


def corral(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corral.cli.main", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_backends_lists_all_four_with_reasons() -> None:
    r = corral("backends")
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[1:] if line.strip()}
    assert set(rows) == {"cuda", "rocm", "metal", "cpu"}
    assert re.search(r"cpu\s+yes \(default\)", r.stdout)
    assert "NVIDIA driver not found" in rows["cuda"]
    assert "no AMD GPU found" in rows["rocm"]
    assert "not macOS" in rows["metal"]


def test_help_is_quick_and_lists_commands() -> None:
    r = corral("--help")
    assert r.returncode == 0
    for command in ("run", "serve", "backends", "list", "ps", "stop", "rm", "cp"):
        assert re.search(rf"^\s+{command}\s", r.stdout, re.M), command


@pytest.mark.slow
class TestRunAgainstServer:
    @pytest.fixture(autouse=True)
    def _host(self, corral_server: str) -> None:
        self.env = {"CORRAL_HOST": corral_server.removeprefix("http://")}
        from corral.client import Client

        Client(host=corral_server).create(SHORT, from_=MODEL, parameters={"num_predict": 24, "temperature": 0})

    def test_run_streams_an_answer(self) -> None:
        r = corral("run", SHORT, "What is the capital of France?", env=self.env)
        assert r.returncode == 0, r.stderr
        assert len(r.stdout.split()) > 3

    def test_verbose_prints_the_stats_block_and_reuses_the_loaded_model(self) -> None:
        corral("run", SHORT, "hi", env=self.env)
        r = corral("run", "--verbose", SHORT, "Say hello.", env=self.env)
        assert r.returncode == 0, r.stderr
        for label in (
            "total duration:",
            "load duration:",
            "prompt eval count:",
            "prompt eval rate:",
            "eval count:",
            "eval rate:",
        ):
            assert label in r.stderr
        load = re.search(r"load duration:\s+([\d.]+)(µs|ms|s)", r.stderr)
        assert load is not None
        value = float(load.group(1)) * {"µs": 1e-6, "ms": 1e-3, "s": 1.0}[load.group(2)]
        assert value < 0.05  # the model stayed loaded

    def test_stdin_is_the_prompt(self) -> None:
        r = corral("run", SHORT, env=self.env, stdin="What is the capital of France? Answer in one word.")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip()

    def test_backend_cpu_works_and_cuda_says_why_not(self) -> None:
        ok = corral("run", "--backend", "cpu", SHORT, "hi", env=self.env)
        assert ok.returncode == 0, ok.stderr
        bad = corral("run", "--backend", "cuda", SHORT, "hi", env=self.env)
        assert bad.returncode == 1
        assert bad.stderr.startswith("Error: backend 'cuda' is unavailable: NVIDIA driver not found")
        assert "Traceback" not in bad.stderr
        unknown = corral("run", "--backend", "tpu", SHORT, "hi", env=self.env)
        assert unknown.returncode == 1 and "known backends: cuda, rocm, metal, cpu" in unknown.stderr

    def test_think_reaches_the_server_which_says_this_model_cannot(self) -> None:
        r = corral("run", "--think", SHORT, "hi", env=self.env)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert r.stderr.strip() == f'Error: "{SHORT}:latest" does not support thinking'
        assert corral("run", "--nothink", SHORT, "hi", env=self.env).returncode == 0  # nothing asked of the model

    def test_a_reader_that_leaves_early_gets_no_error(self) -> None:
        env = {**os.environ, **self.env}
        proc = subprocess.Popen([sys.executable, "-m", "corral.cli.main", "run", MODEL, "Tell me a long story."],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)  # fmt: skip
        assert proc.stdout is not None and proc.stdout.read(5)
        proc.stdout.close()  # as `| head -c 5` does
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 141 and err == b""

    def test_unknown_model_is_one_line_with_what_is_available(self) -> None:
        r = corral("run", "no-such-model", "hi", env=self.env)
        assert r.returncode == 1
        last = r.stderr.strip().splitlines()[-1]  # pull progress may come first, as with `ollama run`
        assert last.startswith("Error: model 'no-such-model' not found")
        assert MODEL in last and "Traceback" not in r.stderr

    def test_list_and_ps_print_ollamas_columns(self) -> None:
        corral("run", SHORT, "hi", env=self.env)
        listed = corral("list", env=self.env)
        assert listed.stdout.split()[:4] == ["NAME", "ID", "SIZE", "MODIFIED"]
        assert MODEL in listed.stdout and SHORT in listed.stdout and "98 MB" in listed.stdout
        ps = corral("ps", env=self.env)
        assert ps.stdout.split()[:6] == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
        assert "100% CPU" in ps.stdout and "from now" in ps.stdout

    def test_stop_unloads(self) -> None:
        corral("run", SHORT, "hi", env=self.env)
        assert corral("stop", SHORT, env=self.env).returncode == 0
        assert SHORT not in corral("ps", env=self.env).stdout
        again = corral("stop", SHORT, env=self.env)
        assert again.returncode == 1 and "is not running" in again.stderr


def _short_model(models: Path) -> None:
    """SHORT in a store, written in-process (no server involved)."""
    from corral.models.create import build, prepare, request_from_modelfile
    from corral.models.store import Store

    store = Store(models)
    request = request_from_modelfile(f"FROM {MODEL}\nPARAMETER num_predict 24\nPARAMETER temperature 0\n", SHORT)
    build(store, prepare(store, request))


@pytest.mark.slow
def test_the_first_run_starts_a_server_and_the_second_reuses_it(tmp_path: Path) -> None:
    env = {
        "CORRAL_HOST": f"127.0.0.1:{free_port()}",
        "CORRAL_HOME": str(tmp_path),
        "CORRAL_MODELS": str(tmp_path / "models"),
    }
    _short_model(tmp_path / "models")
    try:
        first = corral("run", "--verbose", SHORT, "hi", env=env)
        assert first.returncode == 0, first.stderr
        assert (tmp_path / "logs" / "server.log").exists()
        second = corral("run", "--verbose", SHORT, "hi", env=env)
        assert second.returncode == 0, second.stderr
        load = re.search(r"load duration:\s+([\d.]+)(µs|ms|s)", second.stderr)
        assert load and load.group(2) in ("µs", "ms") and (load.group(2) == "µs" or float(load.group(1)) < 50)
    finally:
        pid_file = tmp_path / "logs" / "server.pid"
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGTERM)


@pytest.mark.slow
def test_show_fit_explains_where_the_model_goes() -> None:
    r = corral("show", "--fit", MODEL)
    assert r.returncode == 0, r.stderr
    assert "Backend:   cpu" in r.stdout and "-> 100% CPU" in r.stdout
    assert re.search(r"^total\s.*\syes$", r.stdout, re.M)
    cuda = corral("show", "--fit", "--backend", "cuda", MODEL)
    assert cuda.returncode == 1 and "backend 'cuda' is unavailable" in cuda.stderr


@pytest.mark.slow
def test_show_fit_follows_the_kv_cache_type() -> None:
    sizes = {}
    for kv in ("f16", "q8_0", "q4_0"):
        r = corral("show", "--fit", MODEL, env={"CORRAL_KV_CACHE_TYPE": kv})
        assert r.returncode == 0, r.stderr
        match = re.search(rf"tokens of {kv} KV cache \(([\d.]+) MiB\)", r.stdout)
        assert match, r.stdout
        sizes[kv] = float(match.group(1))
    assert sizes["q8_0"] == pytest.approx(sizes["f16"] * 34 / 64, rel=0.01)
    assert sizes["q4_0"] == pytest.approx(sizes["f16"] * 18 / 64, rel=0.01)
    off = corral("show", "--fit", MODEL, env={"CORRAL_KV_CACHE_TYPE": "q8_0", "CORRAL_FLASH_ATTENTION": "false"})
    assert "tokens of f16 KV cache" in off.stdout
    assert "Note: the q8_0 KV cache needs flash attention, which is off: f16 is used" in off.stdout


class _SizingBackend(FakeBackend):
    """A third-party backend with its own ``estimate`` and no ``explain``."""

    def estimate(self, spec: LoadSpec, devices: Sequence[Device]) -> Estimate | None:
        self.estimates.append((spec, tuple(devices)))
        if spec.num_ctx > 4096:
            raise InsufficientMemory(f"{spec.num_ctx} tokens of context need more than the fake device has")
        return Estimate(spec=spec, size_bytes=3 << 30, size_on_device=1 << 30)


def test_show_fit_shows_a_third_party_backends_estimate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from corral.cli.model_commands import fit_report

    monkeypatch.setenv("CORRAL_HOME", str(tmp_path))
    write_fake_model(tmp_path / "models")
    backend = _SizingBackend()
    report = fit_report("fake", None, 2048, plugins=fake_plugins(backend))
    assert report == "Backend:   fake\nEstimate:  3.0 GiB in all, 1.0 GiB on accelerators -> 67%/33% CPU/GPU"
    [(spec, devices)] = backend.estimates
    assert spec.num_ctx == 2048 and devices == backend.probe().devices
    too_long = fit_report("fake", "fake", 8192, plugins=fake_plugins(backend))
    assert too_long == "Backend:   fake\nDoes not fit: 8192 tokens of context need more than the fake device has"
    # A backend whose estimate has nothing to report (the fake weights are no GGUF): it says so.
    unchecked = fit_report("fake", None, None, plugins=fake_plugins(FakeBackend()))
    assert unchecked == "Backend:   fake\nEstimate:  none (this backend loads models without a memory check)"
