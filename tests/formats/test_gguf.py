"""validate_gguf: reject every GGUF that would crash or fail llama.cpp, summarise the rest."""

from __future__ import annotations

import os
import random
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corral.errors import BadRequest, InvalidModelFile
from corral.formats.gguf import KNOWN_PRE_TOKENIZERS, GGUFSummary, validate_gguf
from ggufmaker import CHATML, write_tiny_llama

# (vocab, defect, words the message must contain)
DEFECTS = [
    ("gpt2", "duplicate_tokens", ["duplicate token", "'hell'"]),
    ("spm", "duplicate_tokens", ["duplicate token", "'lo'"]),
    ("spm", "missing_byte_tokens", ["byte tokens", "<0x80>"]),
    ("gpt2", "missing_merges", ["merges"]),
    ("gpt2", "unknown_pre", ["pre-tokenizer", "corral-unknown-pre"]),
    ("gpt2", "truncated", ["truncated"]),
    ("spm", "truncated", ["truncated"]),
    ("gpt2", "garbage", ["not a valid GGUF file", "magic"]),
    ("gpt2", "bos_out_of_range", ["BOS", "outside the vocabulary"]),
    ("spm", "short_token_types", ["token_type", "entries for"]),
]


def _llama_cpp():
    return pytest.importorskip("llama_cpp")


# ----------------------------------------------------------------------------- rejections


@pytest.mark.parametrize(("vocab", "defect", "words"), DEFECTS, ids=[f"{v}-{d}" for v, d, _ in DEFECTS])
def test_defect_is_rejected(tmp_path: Path, vocab: str, defect: str, words: list[str]) -> None:
    path = write_tiny_llama(tmp_path / f"{vocab}-{defect}.gguf", vocab=vocab, defect=defect)
    with pytest.raises(InvalidModelFile) as info:
        validate_gguf(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    for word in words:
        assert word in message, message
    assert isinstance(info.value, BadRequest) and info.value.status_code == 400


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(InvalidModelFile, match="empty"):
        validate_gguf(empty)
    with pytest.raises(InvalidModelFile, match="cannot read"):
        validate_gguf(tmp_path / "absent.gguf")


def test_header_cut_anywhere_is_rejected_cleanly(tmp_path: Path, tiny_gguf: Path) -> None:
    data = tiny_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    # every cut inside the header/metadata (first ~7 KB) and a few in the tensor data
    for n in list(range(0, 7200, 37)) + [len(data) - 1, len(data) - 1000]:
        cut.write_bytes(data[:n])
        with pytest.raises(InvalidModelFile) as info:
            validate_gguf(cut)
        assert str(info.value).startswith(f"{cut}: ") and "\n" not in str(info.value)


def test_random_corruption_never_escapes_as_another_error(tmp_path: Path, tiny_spm_gguf: Path) -> None:
    data = tiny_spm_gguf.read_bytes()
    rng = random.Random(1234)
    bad = tmp_path / "bad.gguf"
    for _ in range(300):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(0, 7500)] = rng.randrange(256)
        bad.write_bytes(bytes(mutated))
        try:
            validate_gguf(bad)
        except InvalidModelFile as e:
            assert str(e).startswith(f"{bad}: ") and "\n" not in str(e)


def _with_block_count(src: Path, dst: Path, n_layer: int) -> Path:
    """Copy ``src`` with llama.block_count patched in place (key, uint32 type, uint32 value)."""
    data = bytearray(src.read_bytes())
    at = data.index(b"llama.block_count") + len(b"llama.block_count")
    assert struct.unpack_from("<I", data, at)[0] == 4  # GGUF uint32
    struct.pack_into("<I", data, at + 4, n_layer)
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("n_layer", [0, 513, 4_849_666])
def test_block_count_out_of_range_is_rejected(tmp_path: Path, tiny_gguf: Path, n_layer: int) -> None:
    path = _with_block_count(tiny_gguf, tmp_path / "layers.gguf", n_layer)
    expected = rf"^{re.escape(str(path))}: llama.block_count = {n_layer} is outside 1..512"
    with pytest.raises(InvalidModelFile, match=expected):
        validate_gguf(path)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"llama.rope.scaling.type": "stretchy"}, "rope.scaling.type = 'stretchy'"),
        ({"llama.expert_count": 4}, "expert_used_count is 0"),
        ({"llama.expert_count": 2000, "llama.expert_used_count": 2}, "expert_count = 2000 exceeds 1024"),
        ({"llama.expert_count": 4, "llama.expert_used_count": 8}, "expert_used_count = 8 exceeds"),
        ({"llama.expert_group_count": 2}, "without experts"),
        ({"llama.nextn_predict_layers": 3}, "nextn_predict_layers = 3 exceeds"),
    ],
    ids=["rope-scaling", "moe-no-used", "too-many-experts", "used-over-count", "groups-no-experts", "nextn"],
)
def test_hyperparameters_that_abort_llama_cpp_are_rejected(tmp_path: Path, extra: dict, words: str) -> None:
    path = write_tiny_llama(tmp_path / "hp.gguf", extra_metadata=extra)
    with pytest.raises(InvalidModelFile) as info:
        validate_gguf(path)
    assert str(info.value).startswith(f"{path}: ") and words in str(info.value)


def test_valid_optional_metadata_passes(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "ok.gguf", extra_metadata={
        "llama.rope.scaling.type": "linear", "llama.nextn_predict_layers": 0})
    assert validate_gguf(path).block_count == 2


def test_unknown_pre_list_is_sane() -> None:
    assert {"smollm", "gpt-2", "default", "llama-bpe", "qwen2"} <= KNOWN_PRE_TOKENIZERS
    assert "corral-unknown-pre" not in KNOWN_PRE_TOKENIZERS


# ----------------------------------------------------------------------------- good files


def _expected_params(n_vocab: int, n_embd=64, n_layer=2, n_head=4, n_head_kv=2, n_ff=128) -> int:
    kv = n_head_kv * (n_embd // n_head)
    per_layer = 2 * n_embd + 2 * n_embd * n_embd + 2 * kv * n_embd + 3 * n_ff * n_embd
    return 2 * n_vocab * n_embd + n_embd + n_layer * per_layer


def test_tiny_gpt2_summary(tiny_gguf: Path) -> None:
    s = validate_gguf(tiny_gguf)
    assert isinstance(s, GGUFSummary)
    assert s.architecture == "llama"
    assert s.name == "corral-tiny-gpt2"
    assert (s.context_length, s.embedding_length, s.block_count, s.head_count) == (512, 64, 2, 4)
    assert s.file_type == s.quantization == "F32"
    assert s.chat_template == CHATML
    assert s.size_bytes == tiny_gguf.stat().st_size
    assert s.tokenizer_model == "gpt2"
    assert s.tensor_count == 1 + 2 * 9 + 2
    assert s.parameter_count == _expected_params(s.vocab_size)
    assert s.size_bytes < 1_000_000
    with pytest.raises(AttributeError):
        s.name = "x"  # type: ignore[misc]


def test_tiny_spm_summary(tiny_spm_gguf: Path) -> None:
    s = validate_gguf(tiny_spm_gguf)
    assert s.tokenizer_model == "llama"
    assert s.name == "corral-tiny-spm"
    assert s.parameter_count == _expected_params(s.vocab_size)
    assert s.chat_template == CHATML


def test_options_change_the_summary(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "m.gguf", n_embd=32, n_layer=3, n_head=2, n_head_kv=1,
                            n_ff=48, n_ctx=256, chat_template=None)
    s = validate_gguf(path)
    assert (s.context_length, s.embedding_length, s.block_count, s.head_count) == (256, 32, 3, 2)
    assert s.chat_template is None
    assert s.parameter_count == _expected_params(s.vocab_size, 32, 3, 2, 1, 48)


def test_agrees_with_gguf_reader(tiny_gguf: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(tiny_gguf)
    s = validate_gguf(tiny_gguf)
    assert s.parameter_count == sum(int(t.n_elements) for t in reader.tensors)
    assert s.tensor_count == len(reader.tensors)
    assert s.vocab_size == len(reader.fields["tokenizer.ggml.tokens"].data)
    assert s.context_length == reader.fields["llama.context_length"].contents()


def test_real_smollm2_summary(smollm2: Path) -> None:
    path = smollm2
    start = time.perf_counter()
    s = validate_gguf(path)
    elapsed = time.perf_counter() - start
    assert s.architecture == "llama"
    assert s.file_type == "Q4_1"
    assert (s.context_length, s.embedding_length, s.block_count, s.head_count) == (8192, 576, 30, 9)
    assert s.tokenizer_model == "gpt2" and s.vocab_size == 49152
    assert 134_000_000 < s.parameter_count < 135_000_000
    assert s.chat_template and "<|im_start|>" in s.chat_template
    assert s.size_bytes == path.stat().st_size
    assert elapsed < 1.0, f"validating a 100 MB GGUF took {elapsed:.2f} s"


# ----------------------------------------------------------------------------- llama.cpp


@pytest.mark.parametrize("fixture", ["tiny_gguf", "tiny_spm_gguf"])
def test_good_fixtures_load_tokenize_and_generate(request: pytest.FixtureRequest, fixture: str) -> None:
    llama_cpp = _llama_cpp()
    path: Path = request.getfixturevalue(fixture)
    validate_gguf(path)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, verbose=False)
    tokens = llm.tokenize(b"hello world", add_bos=False)
    assert len(tokens) > 1
    assert llm.detokenize(tokens).strip() == b"hello world"
    # special tokens parse as single control tokens
    im_start = llm.tokenize(b"<|im_start|>", add_bos=False, special=True)
    assert len(im_start) == 1
    first = llm.create_completion("hello world", max_tokens=6, temperature=0.0)
    llm.reset()
    second = llm.create_completion("hello world", max_tokens=6, temperature=0.0)
    assert first["usage"]["completion_tokens"] > 0
    assert first["choices"][0]["text"] == second["choices"][0]["text"]
    assert llm.metadata.get("tokenizer.chat_template") == CHATML


_CRASH_SCRIPT = """
import sys, llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=128, verbose=True)
print("loaded", flush=True)
llm.tokenize("hello wörld".encode())
print("tokenized", flush=True)
"""


@pytest.mark.parametrize("case", ["duplicate_tokens", "missing_byte_tokens", "block_count"])
@pytest.mark.posix_signals
def test_what_the_validator_prevents_really_aborts_llama_cpp(
    tmp_path: Path, tiny_gguf: Path, case: str
) -> None:
    """Why the validator exists: each of these kills the whole process, not just the load.

    Run in a subprocess; never load such a file in the test process.
    """
    _llama_cpp()
    if case == "block_count":
        path = _with_block_count(tiny_gguf, tmp_path / "layers.gguf", 600)
        expect = "n_layer_all <= LLAMA_MAX_LAYERS"
    elif case == "duplicate_tokens":
        path = write_tiny_llama(tmp_path / "dup.gguf", defect=case)
        expect = "id_to_token.size() == token_to_id.size()"
    else:
        path = write_tiny_llama(tmp_path / "nobytes.gguf", vocab="spm", defect=case)
        expect = "std::out_of_range"  # loads, then dies tokenising "ö"
    with pytest.raises(InvalidModelFile):
        validate_gguf(path)
    env = dict(os.environ, GGML_NO_BACKTRACE="1")  # otherwise ggml runs gdb for a backtrace
    r = subprocess.run([sys.executable, "-c", _CRASH_SCRIPT, str(path)], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == -signal.SIGABRT, (r.returncode, r.stderr[-2000:])
    assert expect in r.stderr
    assert "tokenized" not in r.stdout
