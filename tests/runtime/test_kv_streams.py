"""KV streams: a model loads with a stream of num_ctx per slot (llama-server's default, and faster: a
token attends only its own sequence's cells); the first request that wants more context than that,
while the model is idle, reloads it once into one pool the slots share, which then serves every
num_ctx; a busy model is not reloaded for it, and the request gets a slot's context."""

from __future__ import annotations

import asyncio
from pathlib import Path

from corral.config import Settings
from corral.models.recipes import store_gguf
from corral.models.store import Store
from corral.plugins import Plugins
from corral.runtime.scheduler import Scheduler

GREEDY = {"temperature": 0, "num_predict": 4, "repeat_penalty": 1.0}


def test_more_context_than_a_slot_reloads_once_into_a_shared_pool(tmp_path: Path, tiny_gguf: Path) -> None:
    settings = Settings(home=tmp_path, models=tmp_path / "models", isolate_runners=False, num_ctx=128, num_parallel=2)
    store_gguf(Store(settings.models_dir), "tiny", tiny_gguf)

    async def main() -> None:
        sched = Scheduler(settings, Plugins())
        try:
            small = await sched.acquire("tiny", GREEDY)
            per_slot = small.loaded.worker
            assert not per_slot.runner.info.kv_unified and per_slot.seq_ctx == per_slot.runner.info.n_ctx  # type: ignore[union-attr]

            busy = await sched.acquire("tiny", {**GREEDY, "num_ctx": 256})  # the model is in use: no reload
            assert busy.loaded.worker is per_slot
            sched.release(busy)
            sched.release(small)

            big = await sched.acquire("tiny", {**GREEDY, "num_ctx": 256})
            pooled = big.loaded.worker
            assert pooled is not per_slot and pooled.runner.info.kv_unified  # type: ignore[union-attr]
            assert pooled.seq_ctx == pooled.total_ctx >= 256  # one sequence may take the whole pool
            text = "".join([e.text async for e in sched.stream(big, "the cat sat on the mat " * 20)])
            sched.release(big)
            assert text

            again = await sched.acquire("tiny", GREEDY)  # the pool serves smaller contexts without reloading
            assert again.loaded.worker is pooled
            sched.release(again)
        finally:
            await sched.close()

    asyncio.run(main())
