"""The metal backend's MLX engine, driven directly on mlx's CPU device (``mlx[cpu]`` on Linux; on a
Mac also on the GPU).

Three references: llama.cpp (the same prompt must give the same greedy tokens and the same token
ids), an independent float64 numpy forward pass over ``gguf``'s own dequantisation (the engine must
compute the model the GGUF describes, quantised weights included), and the engine itself (batched
equals one at a time, truncate-and-refeed equals a fresh run). LoRA adapters and grammars are held
to llama.cpp's tokens too. Skipped only where mlx cannot be imported.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from corral.engines.llamacpp.runner import LlamaCppRunner
from corral.errors import BadRequest, CorralError
from corral.formats.gguf import read_metadata
from corral.hookspecs import LoadSpec, Sampling, SequenceStep
from corral.runtime.worker import ModelWorker
from ggufmaker import write_lora_for, write_tiny_llama, write_tiny_lora
from runnerchecks import GREEDY, decode_together, greedy, run_job

try:
    import mlx.core as mx

    MLX_MISSING = ""
except Exception as exc:  # ImportError without the cpu extra; OSError where glibc is older than 2.35
    mx = None  # type: ignore[assignment]
    MLX_MISSING = f"mlx cannot be imported here ({type(exc).__name__}: {exc}); pip install 'mlx[cpu]'"

pytestmark = [pytest.mark.metal, pytest.mark.skipif(bool(MLX_MISSING), reason=MLX_MISSING or "-")]

if not MLX_MISSING:
    from corral_backend_metal.mlx_engine import MLXRunner, _Cache, derived_folder

DEVICES = ["cpu"] + (["gpu"] if mx is not None and mx.metal.is_available() else [])
PROMPTS = ["hello world", "the cat sat on the mat", "one two three four", "<|im_start|>user\nhi<|im_end|>\n"]
STRINGS = [
    "hello world", "Hello, World! 123 4567", "  multiple   spaces\t\ttabs\n\nnew\r\nlines ", "Café déjà vu — naïve",
    "日本語のテキスト 中文", "emoji 🤖🎉 👩‍👩‍👧", "it's don't we'll I'M they've", "<|im_start|>user\nhi<|im_end|>\n",
    "x<|im_end|>y<|endoftext|>z", "<reponame>a<file_sep>", "", " ", "\n", "1234567890", "def f(x):\n    return x**2",
    "Ελληνικά русский عربى हिन्दी", "price: $3.50/kg (approx.)",
]
# llama.cpp file types for a 256-wide tiny model (K-quants need rows of 256). The first group is kept
# exactly (output and embedding forced to the same type); Q6_K and Q3_K (16-element sub-blocks)
# are stored as float16 by the engine, so they get a looser tolerance.
EXACT_TYPES = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q4_K_S": 12, "Q5_K_S": 13}
ROUNDED_TYPES = {"Q6_K": None, "Q3_K_M": None}


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model quantised by llama.cpp itself into each type the converter handles."""
    import llama_cpp

    folder = tmp_path_factory.mktemp("tiny-quantized")
    source = write_tiny_llama(folder / "tiny-256.gguf", n_embd=256, n_ff=512)
    out: dict[str, Path] = {}
    for name, forced in {**EXACT_TYPES, **ROUNDED_TYPES}.items():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name}")
        if forced is not None:
            params.output_tensor_type = params.token_embedding_type = forced
        dest = folder / f"tiny-{name}.gguf"
        assert llama_cpp.llama_model_quantize(str(source).encode(), str(dest).encode(), ctypes.byref(params)) == 0
        out[name] = dest
    return out


def load(path: Path, device: str = "cpu", parallel: int = 2, **kw: Any) -> MLXRunner:
    return MLXRunner(LoadSpec(model_path=path, num_ctx=256, num_parallel=parallel, **kw), device=device)


def load_cpp(path: Path, adapters: tuple[Path, ...] = ()) -> LlamaCppRunner:
    return LlamaCppRunner(LoadSpec(model_path=path, num_ctx=256, num_parallel=1, num_thread=1, adapters=adapters))


def mlx_logits(runner: MLXRunner, tokens: list[int]) -> np.ndarray:
    with mx.stream(runner.device):
        return np.array(runner.model.forward([(_Cache(), tokens)], [0])[0])


def reference_logits(path: Path, tokens: list[int], adapters: tuple[Path, ...] = ()) -> np.ndarray:
    """An independent float64 llama forward: weights from gguf's own dequantisation, GGUF's Q/K row
    order with llama.cpp's interleaved ("normal") rope; LoRA adapters merged into the weights
    (W + alpha/rank * B @ A; token_embd's flipped pair as E + alpha/rank * A @ B.T)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    meta = read_metadata(path)
    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    deltas: dict[str, np.ndarray] = {}
    for adapter in adapters:
        halves = {t.name: np.asarray(t.data, np.float64) for t in GGUFReader(str(adapter)).tensors}
        alpha = float(read_metadata(adapter)["adapter.lora.alpha"])
        for name in {n.rpartition(".")[0] for n in halves}:
            a, b = halves[f"{name}.lora_a"], halves[f"{name}.lora_b"]
            delta = a @ b.T if name == "token_embd.weight" else b @ a
            deltas[name] = deltas.get(name, 0) + alpha / b.shape[1] * delta

    def W(name: str) -> np.ndarray:  # dequantised on use: float64 copies of every tensor would take GBs
        t = tensors[name]
        w = dequantize(t.data, t.tensor_type).astype(np.float64).reshape([int(s) for s in reversed(t.shape)])
        return w + deltas.get(name, 0)

    d, n_head = meta["llama.embedding_length"], meta["llama.attention.head_count"]
    n_kv, eps = meta["llama.attention.head_count_kv"], meta["llama.attention.layer_norm_rms_epsilon"]
    hd, T = d // n_head, len(tokens)
    angles = np.arange(T)[:, None, None] * meta.get("llama.rope.freq_base", 10000.0) ** (-np.arange(0, hd, 2) / hd)

    def rms(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    def rope(x: np.ndarray) -> np.ndarray:
        out, even, odd = np.empty_like(x), x[..., 0::2], x[..., 1::2]
        out[..., 0::2] = even * np.cos(angles) - odd * np.sin(angles)
        out[..., 1::2] = even * np.sin(angles) + odd * np.cos(angles)
        return out

    h = W("token_embd.weight")[tokens]
    for i in range(meta["llama.block_count"]):
        b = lambda name, i=i: W(f"blk.{i}.{name}.weight")  # noqa: E731
        x = rms(h, b("attn_norm"))
        q = rope((x @ b("attn_q").T).reshape(T, n_head, hd))
        k = np.repeat(rope((x @ b("attn_k").T).reshape(T, n_kv, hd)), n_head // n_kv, axis=1)
        v = np.repeat((x @ b("attn_v").T).reshape(T, n_kv, hd), n_head // n_kv, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + np.triu(np.full((T, T), -np.inf), 1)
        a = np.exp(s - s.max(-1, keepdims=True))
        h = h + np.einsum("hts,shd->thd", a / a.sum(-1, keepdims=True), v).reshape(T, d) @ b("attn_output").T
        x = rms(h, b("ffn_norm"))
        gate = x @ b("ffn_gate").T
        h = h + (gate / (1 + np.exp(-gate)) * (x @ b("ffn_up").T)) @ b("ffn_down").T
    head = "output.weight" if "output.weight" in tensors else "token_embd.weight"
    return rms(h[-1], W("output_norm.weight")) @ W(head).T


# ---- tokenizer ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["tiny_gguf", "tiny_spm_gguf", pytest.param("smollm2", marks=pytest.mark.slow)])
def test_token_ids_pieces_and_end_tokens_equal_llamacpps(model: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(model)
    mine, cpp = load(path), load_cpp(path)
    try:
        for text in STRINGS:
            for special in (True, False):
                for add_bos in (True, False):
                    assert mine.tokenize(text, special=special, add_bos=add_bos) == cpp.tokenize(
                        text, special=special, add_bos=add_bos
                    ), (text, special, add_bos)
        ids = range(cpp.n_vocab)
        assert [mine.token_bytes(i) for i in ids] == [cpp.token_bytes(i) for i in ids]
        assert [i for i in ids if mine.is_end_of_generation(i)] == [i for i in ids if cpp.is_end_of_generation(i)]
        assert (mine.info.bos_token, mine.info.add_bos, mine.info.bos_text, mine.info.eos_text) == (
            cpp.info.bos_token,
            cpp.info.add_bos,
            cpp.info.bos_text,
            cpp.info.eos_text,
        )
        assert (mine.info.chat_template, mine.info.n_vocab, mine.info.n_embd) == (
            cpp.info.chat_template,
            cpp.info.n_vocab,
            cpp.info.n_embd,
        )
    finally:
        mine.close()
        cpp.close()


# ---- the same answers as llama.cpp, and as the model itself -----------------------------------------


def test_f32_model_gives_llamacpps_first_20_greedy_tokens(tiny_gguf: Path, device: str) -> None:
    mine, cpp = load(tiny_gguf, device), load_cpp(tiny_gguf)
    try:
        for prompt in PROMPTS:
            assert greedy(mine, prompt) == greedy(cpp, prompt), prompt
    finally:
        mine.close()
        cpp.close()


@pytest.mark.slow
def test_smollm2_follows_llamacpp_until_a_near_tie(smollm2: Path, device: str) -> None:
    """Q4_1/Q8_0 SmolLM2: llama.cpp's CPU kernels quantise the activations to 8 bits before each
    quantised dot product (its KV cache is float16 too), which moves its logits by up to ~0.8; the
    MLX engine matches the exact model to ~1e-4 (next test). Greedy tokens therefore agree until the
    two best candidates are within that noise, and there llama.cpp's pick must be a near tie."""
    prompts = [
        "hello world",
        "The capital of France is",
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    ]
    mine, cpp = load(smollm2, device), load_cpp(smollm2)
    try:
        for prompt in prompts:
            ours, theirs = greedy(mine, prompt), greedy(cpp, prompt)
            assert ours[0] == theirs[0], prompt
            split = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), None)
            print(
                f"{prompt!r}: {'identical 20 tokens' if split is None else f'first differ at {split}'}"
                f"\n  mlx       {ours}\n  llama.cpp {theirs}"
            )
            if split is not None:
                logits = mlx_logits(mine, mine.tokenize(prompt) + ours[:split])
                margin = float(logits[ours[split]] - logits[theirs[split]])
                assert 0 <= margin < 0.5, (prompt, split, margin)
    finally:
        mine.close()
        cpp.close()


@pytest.mark.slow
def test_smollm2_logits_are_the_exact_models(smollm2: Path) -> None:
    runner = load(smollm2)
    try:
        tokens = runner.tokenize("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n")
        ref = reference_logits(smollm2, tokens)
        assert np.abs(mlx_logits(runner, tokens) - ref).max() < 1e-3 * np.abs(ref).max()
    finally:
        runner.close()


@pytest.mark.parametrize("qtype", [*EXACT_TYPES, *ROUNDED_TYPES])
def test_quantised_weights_run_as_the_gguf_defines_them(quantized: dict[str, Path], qtype: str) -> None:
    """Logits against the float64 reference: exact types to float32 rounding (observed ~3e-6 of
    the logits' range, vs 5e-4 with a float16 round trip); Q6_K/Q3_K stored as float16 looser."""
    path = quantized[qtype]
    runner = load(path)
    try:
        tokens = runner.tokenize("hello world, the cat sat on the mat")
        ref = reference_logits(path, tokens)
        tolerance = 2e-5 if qtype in EXACT_TYPES else 3e-3
        assert np.abs(mlx_logits(runner, tokens) - ref).max() < tolerance * np.abs(ref).max()
    finally:
        runner.close()


@pytest.mark.parametrize("qtype", [*EXACT_TYPES, "Q6_K"])
def test_conversion_never_requantises(quantized: dict[str, Path], qtype: str) -> None:
    """Each converted tensor, dequantised by mlx, equals gguf's dequantisation of the GGUF block
    (bit for bit where the type maps onto MLX groups); Q4_0/Q4_1/Q8_0 equal ``mx.load``'s own."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from corral_backend_metal.mlx_convert import ensure_mlx_folder, hf_name

    path = quantized[qtype]
    folder = ensure_mlx_folder(path)
    config = json.loads((folder / "config.json").read_text())
    weights = mx.load(str(folder / "model.safetensors"))
    native = mx.load(str(path)) if qtype in ("Q4_0", "Q4_1", "Q8_0") else {}
    for tensor in GGUFReader(str(path)).tensors:
        name = hf_name(tensor.name)
        assert name is not None
        module = name.rsplit(".", 1)[0]
        ref = dequantize(tensor.data, tensor.tensor_type).reshape([int(s) for s in reversed(tensor.shape)])
        q = (config.get("quantization") or {}).get(module)
        if q:
            got = mx.dequantize(
                weights[name],
                weights[f"{module}.scales"].astype(mx.float32),
                weights[f"{module}.biases"].astype(mx.float32),
                group_size=32,
                bits=q["bits"],
            )
            stem = tensor.name.removesuffix(".weight")
            if f"{stem}.scales" in native:  # mx.load's own Q4_0/Q4_1/Q8_0 arrays, byte for byte
                for part in ("weight", "scales", "biases"):
                    assert np.array_equal(np.array(native[f"{stem}.{part}"]), np.array(weights[f"{module}.{part}"]))
        else:
            got = weights[name].astype(mx.float32)
        if tensor.tensor_type.name == "Q6_K":
            np.testing.assert_allclose(np.array(got), ref, rtol=2.0**-11, atol=0)
        else:
            assert np.array_equal(np.array(got), ref), tensor.name


# ---- the engine against itself ----------------------------------------------------------------------


def test_a_batched_step_gives_the_same_greedy_tokens_as_one_at_a_time(tiny_gguf: Path, device: str) -> None:
    runner = load(tiny_gguf, device, parallel=4)
    try:
        alone = [greedy(runner, p, 16) for p in PROMPTS]
        together = decode_together(runner, [runner.tokenize(p) for p in PROMPTS], 16)
        assert together == alone
        assert len({tuple(t) for t in alone}) > 1
    finally:
        runner.close()


def test_a_prompt_longer_than_a_batch_is_split_and_still_matches(tiny_gguf: Path) -> None:
    prompt = "hello world " * 20
    chunked, wide, cpp = load(tiny_gguf, num_batch=32), load(tiny_gguf, num_batch=512), load_cpp(tiny_gguf)
    try:
        assert len(chunked.tokenize(prompt)) > 32
        assert greedy(chunked, prompt, 8) == greedy(wide, prompt, 8) == greedy(cpp, prompt, 8)
    finally:
        for r in (chunked, wide, cpp):
            r.close()


def test_truncate_and_refeed_reproduces_the_next_token(tiny_gguf: Path, device: str) -> None:
    runner = load(tiny_gguf, device)
    try:
        runner.set_sampling(0, GREEDY)
        tokens = runner.tokenize("the cat sat on the mat and then it")
        first = runner.step([SequenceStep(0, tokens)])[0]
        assert runner.cached(0) == len(tokens)
        assert runner.truncate(0, 4) == 4 and runner.cached(0) == 4
        assert runner.step([SequenceStep(0, tokens[4:])])[0] == first
        runner.step([SequenceStep(0, tokens[:2], sample=False)])  # feeding without sampling
        assert runner.cached(0) == len(tokens) + 2
        assert runner.truncate(0, 0) == 0 and runner.cached(0) == 0
    finally:
        runner.close()


def test_a_full_context_is_an_error_that_leaves_the_cache_alone(tiny_gguf: Path) -> None:
    runner = load(tiny_gguf, parallel=1)
    try:
        runner.set_sampling(0, GREEDY)
        runner.step([SequenceStep(0, [5] * 200)])
        with pytest.raises(CorralError, match="context is full"):
            runner.step([SequenceStep(0, [5] * 100)])
        assert runner.cached(0) == 200
    finally:
        runner.close()


def test_the_worker_drives_the_engine_with_the_prefix_cache(tiny_gguf: Path) -> None:
    worker = ModelWorker(lambda: load(tiny_gguf, parallel=2), "tiny-mlx")
    try:
        runner = worker.wait_loaded(60)
        first = "<|im_start|>system\nyou are terse<|im_end|>\n<|im_start|>user\nhello world<|im_end|>\n"
        events = run_job(worker, first)
        second = first + "<|im_start|>assistant\nok<|im_end|>\n<|im_start|>user\nthe cat<|im_end|>\n"
        done = run_job(worker, second)[-1]
        assert events[-1].done_reason in ("stop", "length") and done.stats is not None
        assert done.stats.cached_tokens >= len(runner.tokenize(first))
        assert done.stats.prompt_eval_count == len(runner.tokenize(second)) - done.stats.cached_tokens
        cpp = load_cpp(tiny_gguf)
        try:  # the streamed text is what llama.cpp generates
            tokens = list(itertools.takewhile(lambda t: not cpp.is_end_of_generation(t), greedy(cpp, first, 8)))
            expected = b"".join(cpp.token_bytes(t) for t in tokens)
        finally:
            cpp.close()
        assert "".join(e.text for e in events).encode() == expected.decode("utf-8", "replace").encode()
    finally:
        worker.stop()
        worker.join(10)


def test_embeddings_have_the_models_width_and_match_llamacpp(tiny_gguf: Path, device: str) -> None:
    runner, cpp = load(tiny_gguf, device), load_cpp(tiny_gguf)
    try:
        texts = ["hello", "the cat sat"]
        vectors = runner.embed(texts)
        assert [len(v) for v in vectors] == [64, 64] and vectors[0] != vectors[1]
        np.testing.assert_allclose(vectors, cpp.embed(texts), atol=1e-2)  # llama.cpp's KV cache is float16
    finally:
        runner.close()
        cpp.close()


def test_sampling_follows_llamacpps_penalties_and_seeds(tiny_gguf: Path) -> None:
    runner, cpp = load(tiny_gguf), load_cpp(tiny_gguf)
    try:
        plain = greedy(runner, "hello world", 40)
        by_window = {}
        for last_n in (16, -1, 0):  # llama.cpp's window: the last 16, the whole context, none
            penalised = Sampling(temperature=0, repeat_penalty=1.5, frequency_penalty=0.2, repeat_last_n=last_n)
            by_window[last_n] = greedy(runner, "hello world", 40, penalised)
            assert by_window[last_n] == greedy(cpp, "hello world", 40, penalised), last_n
        assert by_window[0] == plain and by_window[16] != plain and by_window[-1] != by_window[16]
        assert greedy(runner, "hello world", 20, Sampling(temperature=0.8, top_k=1, repeat_penalty=1.0)) == greedy(
            runner, "hello world", 20
        )
        seeded = Sampling(temperature=1.5, top_k=0, top_p=0.95, min_p=0.01, seed=7, repeat_penalty=1.0)
        assert greedy(runner, "hello world", 20, seeded) == greedy(runner, "hello world", 20, seeded)
    finally:
        runner.close()
        cpp.close()


def until_end(runner: Any, prompt: str, sampling: Sampling, limit: int = 200) -> list[int]:
    """Tokens up to (not including) end of generation: a finished grammar allows nothing after it."""
    runner.truncate(0, 0)
    runner.set_sampling(0, sampling)
    out = [runner.step([SequenceStep(0, runner.tokenize(prompt))])[0]]
    while not runner.is_end_of_generation(out[-1]) and len(out) < limit:
        out.append(runner.step([SequenceStep(0, [out[-1]])])[0])
    return out[:-1] if runner.is_end_of_generation(out[-1]) else out


def test_a_grammar_gives_llamacpps_tokens(tiny_gguf: Path) -> None:
    from corral.chat.prompting import grammar_for

    runner, cpp = load(tiny_gguf), load_cpp(tiny_gguf)
    try:
        assert runner._grammar_vocab._model is None  # llama.cpp reads the vocabulary only on a grammar
        schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
        for fmt in ("json", schema):
            exact = Sampling(temperature=0, repeat_penalty=1.0, grammar=grammar_for(fmt))
            ours = until_end(runner, PROMPTS[3], exact)
            assert ours == until_end(cpp, PROMPTS[3], exact), fmt
            # a seeded draw cannot follow llama.cpp's RNG, but it must follow the grammar and its seed
            drawn = Sampling(temperature=0.9, seed=3, grammar=grammar_for(fmt))
            again = until_end(runner, PROMPTS[3], drawn)
            assert again == until_end(runner, PROMPTS[3], drawn)
            for tokens in (ours, again):
                value = json.loads(b"".join(runner.token_bytes(t) for t in tokens))
                assert isinstance(value, dict) and (fmt == "json" or isinstance(value["ok"], bool)), value
        assert runner._grammar_vocab._model is not None
        with pytest.raises(BadRequest, match="grammar"):
            runner.set_sampling(0, Sampling(grammar="root ::= (("))
    finally:
        runner.close()
        cpp.close()
    assert runner._grammar_vocab._model is None


# ---- LoRA adapters ----------------------------------------------------------------------------------


def cpp_logits(runner: LlamaCppRunner, tokens: list[int]) -> np.ndarray:
    """llama.cpp's logits after ``tokens`` (a diagnostic reach into the reference runner)."""
    runner.truncate(0, 0)
    runner.set_sampling(0, GREEDY)
    runner.step([SequenceStep(0, tokens)])
    row = runner._L.llama_get_logits_ith(runner._ctx, -1)
    return np.ctypeslib.as_array(row, shape=(runner.n_vocab,)).copy()


def test_lora_adapters_run_as_llamacpp_runs_them(tiny_gguf: Path, tmp_path: Path) -> None:
    """Adapters on two matrices, on every matrix llama.cpp adapts (token embeddings and output too, with
    alpha != rank), and both at once: the logits of the adapted model (the float64 reference with the
    adapters merged, to float32 rounding), the same first 20 greedy tokens as llama.cpp, and its
    logits to within its float16 KV cache (observed up to 2e-2 of the logits' range, where the
    adapters make activations large); a zero adapter changes nothing."""
    some, every = write_tiny_lora(tmp_path / "some.gguf"), write_lora_for(tiny_gguf, tmp_path / "every.gguf")
    zero = write_tiny_lora(tmp_path / "zero.gguf", scale=0.0)
    plain = load(tiny_gguf)
    try:
        for adapters in ((some,), (every,), (some, every), (zero,)):
            mine, cpp = load(tiny_gguf, adapters=adapters), load_cpp(tiny_gguf, adapters)
            try:
                for prompt in PROMPTS:
                    ours = greedy(mine, prompt)
                    assert ours == greedy(cpp, prompt), (adapters, prompt)
                    assert (ours == greedy(plain, prompt)) == (adapters == (zero,)), (adapters, prompt)
                for prompt in PROMPTS:
                    tokens = mine.tokenize(prompt)
                    ours, exact = mlx_logits(mine, tokens), reference_logits(tiny_gguf, tokens, adapters)
                    assert np.abs(ours - exact).max() < 2e-5 * np.abs(exact).max(), (adapters, prompt)
                    theirs = cpp_logits(cpp, tokens)
                    assert np.abs(theirs - exact).max() < 5e-2 * np.abs(exact).max(), (adapters, prompt)
            finally:
                mine.close()
                cpp.close()
    finally:
        plain.close()


def test_a_lora_that_does_not_fit_the_model_is_refused(tiny_gguf: Path, tmp_path: Path) -> None:
    from corral.errors import InvalidModelFile

    wider = write_tiny_lora(tmp_path / "wider.gguf", n_embd=128)
    with pytest.raises(InvalidModelFile, match="shapes"):
        load(tiny_gguf, adapters=(wider,))
    with pytest.raises(InvalidModelFile, match="adapter"):
        load(tiny_gguf, adapters=(tiny_gguf,))  # a model, not an adapter


def test_a_tied_output_takes_adapters_but_not_on_its_shared_embeddings(tmp_path: Path) -> None:
    tied = write_tiny_llama(tmp_path / "tied.gguf", tied=True)
    some = write_tiny_lora(tmp_path / "some.gguf")
    mine, cpp = load(tied, adapters=(some,)), load_cpp(tied, (some,))
    try:
        assert greedy(mine, PROMPTS[1]) == greedy(cpp, PROMPTS[1])
    finally:
        mine.close()
        cpp.close()
    # llama.cpp would apply token_embd's flipped pair to the shared output too, and abort on its shapes
    with pytest.raises(BadRequest, match="token_embd"):
        load(tied, adapters=(write_lora_for(tied, tmp_path / "every.gguf"),))


# ---- the derived MLX folder -----------------------------------------------------------------------


def test_the_mlx_folder_is_derived_once_and_keyed_by_the_blob_digest(tiny_gguf: Path, tmp_path: Path) -> None:
    from corral.config import Settings

    blob = tmp_path / ("sha256-" + "ab" * 32)
    shutil.copy(tiny_gguf, blob)
    runner = load(blob)
    runner.close()
    folder = derived_folder(blob)
    assert folder.parent == Settings().home / "mlx" and folder.name.startswith("ab" * 32)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    again = load(blob)
    try:
        assert again.folder == folder and (folder / "model.safetensors").stat().st_mtime_ns == stamp
        assert not [p for p in folder.parent.iterdir() if ".tmp-" in p.name]
    finally:
        again.close()


def test_mlx_lm_loads_the_derived_folder_and_agrees(quantized: dict[str, Path]) -> None:
    pytest.importorskip("mlx_lm", reason="mlx-lm is not installed")
    from mlx_lm.utils import load_model

    runner = load(quantized["Q4_K_S"])
    try:
        model, _config = load_model(runner.folder)
        tokens = runner.tokenize("hello world, the cat sat")
        with mx.stream(mx.cpu):
            theirs = np.array(model(mx.array([tokens]))[0, -1].astype(mx.float32))
        np.testing.assert_allclose(mlx_logits(runner, tokens), theirs, atol=1e-3)
    finally:
        runner.close()


def test_importing_the_backend_and_engine_does_not_import_mlx() -> None:
    code = "import sys, corral_backend_metal, corral_backend_metal.mlx_engine; sys.exit('mlx' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], env=os.environ.copy(), timeout=60).returncode == 0
