"""The ONNX engine: a Runner over onnxruntime-genai for model folders in its layout
(genai_config.json + model.onnx + tokenizer.json), on the CPU or, with the CUDA build, on a GPU.

Shape of the engine:

* One ``og.Generator`` per sequence. onnxruntime-genai batches the rows *inside* one generator (all
  advancing in lockstep), not separate generators, so ``step`` advances the listed sequences one
  after another: continuous batching holds, but each step costs one forward pass per sequence.
* The model is fed with ``append_tokens`` and the next token is picked here, from ``get_logits``,
  by ``corral.engines.sampling``'s numpy sampler, which follows llama.cpp's chain (penalties over the
  generated tokens, top-k, typical, top-p, min-p, temperature, seeded draw). genai's own search
  options cannot express repeat_last_n, min_p, typical_p or presence/frequency penalties, so every
  sampling option behaves here as it does on the CPU backend.
* GBNF grammars (Ollama's ``format``) go through llama.cpp's grammar sampler over the vocabulary in
  ``vocab.gguf``, which ``corral.engines.onnx.convert`` writes beside a converted model. A folder from
  elsewhere has none and refuses grammars with a 400.
* ``truncate`` uses ``Generator.rewind_to``; where that fails the sequence is rebuilt from its kept
  tokens. Embeddings mean-pool the ``hidden_states`` output (the final norm's output, what llama.cpp
  pools) when the model has it; otherwise they are refused.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from corral.engines.sampling import GrammarVocabulary, Sampler
from corral.errors import BadRequest, CorralError, InvalidModelFile, PromptTooLong
from corral.formats.hfnames import byte_decoder as _byte_decoder
from corral.formats.onnx import PROVENANCE, VOCAB_GGUF, is_genai_folder, read_json
from corral.hookspecs import LoadSpec, ModelInfo, Sampling, SequenceStep, TokenLogprobs

# Token texts llama.cpp treats as end of generation wherever a vocabulary has them, and the FIM
# pad/repo/separator tokens it adds to that set (llama-vocab.cpp in llama-cpp-python 0.3.36).
EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
    "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]",
    "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", "<|file_sep|>",
})  # fmt: skip


# ---- text: onnxruntime-genai's tokenizer, plus tables from tokenizer.json -----------------------------




_BYTE_DECODER = _byte_decoder()


def _token_texts(spec: dict[str, Any], n_vocab: int) -> list[str]:
    """Each id's text as tokenizer.json spells it (BPE/WordPiece vocab dicts, or unigram piece lists)."""
    texts = [""] * n_vocab
    vocab = spec["model"]["vocab"]
    pairs = vocab.items() if isinstance(vocab, dict) else ((piece, i) for i, (piece, _score) in enumerate(vocab))
    for text, index in pairs:
        if 0 <= index < n_vocab:
            texts[index] = text
    for added in spec.get("added_tokens", []):
        if 0 <= added["id"] < n_vocab:
            texts[added["id"]] = added["content"]
    return texts


class Vocabulary:
    """Tokenising through ``og.Tokenizer``; token bytes and control tokens from tokenizer.json."""

    def __init__(self, folder: Path, model: Any, n_vocab: int, eos_ids: Sequence[int]) -> None:
        import onnxruntime_genai as og

        self._og = og.Tokenizer(model)
        self._file = folder / "tokenizer.json"
        spec = json.loads(self._file.read_text(encoding="utf-8"))
        self.texts = _token_texts(spec, n_vocab)
        self.eog = {t for t in eos_ids if 0 <= t < n_vocab} | {i for i, t in enumerate(self.texts) if t in EOG_TEXTS}
        special = {a["id"] for a in spec.get("added_tokens", []) if a.get("special") and 0 <= a["id"] < n_vocab}
        self.control = special | self.eog  # llama.cpp makes EOG tokens control tokens whatever the file says
        self._control_texts = [self.texts[i] for i in self.control if self.texts[i]]
        self._byte_level = "ByteLevel" in json.dumps(spec.get("decoder"))
        self._bytes: dict[int, bytes] = {}
        self._literal: Any = None  # a tokenizers.Tokenizer that reads control-token text as plain text

    def encode(self, text: str, special: bool) -> list[int]:
        if not text:
            return []
        if special or not any(t in text for t in self._control_texts):
            return [int(t) for t in self._og.encode(text)]
        return self._encode_literally(text)

    def _encode_literally(self, text: str) -> list[int]:
        """og.Tokenizer always parses control tokens; the tokenizers package can be told not to."""
        if self._literal is None:
            try:
                from tokenizers import Tokenizer
            except ImportError:
                raise BadRequest("tokenising control-token text as plain text needs the 'tokenizers' package") from None
            self._literal = Tokenizer.from_file(str(self._file))
            self._literal.encode_special_tokens = True
        return list(self._literal.encode(text, add_special_tokens=False).ids)

    def token_bytes(self, token: int) -> bytes:
        piece = self._bytes.get(token)
        if piece is None:
            piece = self._bytes[token] = self._piece(token)
        return piece

    def _piece(self, token: int) -> bytes:
        if token in self.control or not 0 <= token < len(self.texts):
            return b""  # llama.cpp renders control tokens in generated text as nothing
        text = self.texts[token]
        if self._byte_level:
            if all(ch in _BYTE_DECODER for ch in text):
                return bytes(_BYTE_DECODER[ch] for ch in text)
            return text.encode("utf-8")
        if len(text) == 6 and text.startswith("<0x") and text.endswith(">"):  # sentencepiece byte fallback
            return bytes([int(text[3:5], 16)])
        return text.replace("\u2581", " ").encode("utf-8")


# ---- the Runner -----------------------------------------------------------------------------------------


class OnnxRunner:
    """One loaded onnxruntime-genai model; every method is called from the model's owner thread."""

    def __init__(self, spec: LoadSpec, *, provider: str = "cpu", device_id: int = 0) -> None:
        import onnxruntime_genai as og

        from corral.engines.host import physical_cores

        folder = Path(spec.model_path)
        if not is_genai_folder(folder):
            raise InvalidModelFile(f"{folder} is not an onnxruntime-genai model folder (no genai_config.json)")
        genai = json.loads((folder / "genai_config.json").read_text())
        model_cfg, decoder = genai["model"], genai["model"]["decoder"]
        self.folder = folder
        self.provider = provider
        self.threads = spec.num_thread or physical_cores()
        self.n_batch = max(32, spec.num_batch)
        config = og.Config(str(folder))
        config.clear_providers()
        if provider != "cpu":
            config.append_provider(provider)
            config.set_provider_option(provider, "device_id", str(device_id))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": self.threads}}}}))
        try:
            self._model = og.Model(config)
        except Exception as exc:  # onnxruntime raises plain RuntimeErrors
            raise InvalidModelFile(f"onnxruntime-genai could not load {folder}: {exc}") from None
        self._og = og

        n_vocab = int(model_cfg["vocab_size"])
        eos = model_cfg.get("eos_token_id")
        eos_ids = [int(e) for e in (eos if isinstance(eos, list) else [eos] if eos is not None else [])]
        self.vocab = Vocabulary(folder, self._model, n_vocab, eos_ids)
        n_ctx_train = int(model_cfg.get("context_length") or genai.get("search", {}).get("max_length") or spec.num_ctx)
        self.seq_ctx = min(spec.num_ctx, n_ctx_train)
        # Per-request num_ctx may take more than one slot's share of the pool (as llama.cpp's unified KV):
        # let a generator grow to the whole pool, with a cache that grows instead of being preallocated.
        self.max_length = min(n_ctx_train, self.seq_ctx * spec.num_parallel)
        tok_cfg = read_json(folder / "tokenizer_config.json")
        provenance = read_json(folder / PROVENANCE)
        bos = model_cfg.get("bos_token_id")
        bos = int(bos) if isinstance(bos, int) and 0 <= bos < n_vocab else None
        template = tok_cfg.get("chat_template")
        if not isinstance(template, str) and (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        size = sum(p.stat().st_size for p in folder.glob("*.onnx*"))
        self.info = ModelInfo(
            architecture=str(model_cfg.get("type", "unknown")),
            n_ctx_train=n_ctx_train,
            n_ctx=self.seq_ctx,
            n_vocab=n_vocab,
            n_embd=int(decoder.get("hidden_size", 0)),
            num_parallel=spec.num_parallel,
            bos_token=bos,
            add_bos=bool(provenance.get("add_bos", tok_cfg.get("add_bos_token", False))) and bos is not None,
            bos_text=self.vocab.texts[bos] if bos is not None else "",
            eos_text=self.vocab.texts[eos_ids[0]] if eos_ids and 0 <= eos_ids[0] < n_vocab else "",
            chat_template=template if isinstance(template, str) else None,
            size_bytes=size,
            size_on_device=0 if provider == "cpu" else size,
        )
        self._gens: dict[int, Any] = {}
        self._samplers: dict[int, Sampler] = {}
        self._grammar_vocab = GrammarVocabulary(folder / VOCAB_GGUF)

    # ---- text ----------------------------------------------------------------------------------------------
    def tokenize(self, text: str, *, special: bool = True, add_bos: bool = False) -> list[int]:
        tokens = self.vocab.encode(text, special)
        if add_bos and self.info.bos_token is not None:
            tokens = [self.info.bos_token, *tokens]
        return tokens

    def token_bytes(self, token: int) -> bytes:
        return self.vocab.token_bytes(token)

    def is_end_of_generation(self, token: int) -> bool:
        return token in self.vocab.eog

    # ---- sampling ------------------------------------------------------------------------------------------
    def set_sampling(self, seq: int, sampling: Sampling) -> None:
        old = self._samplers.pop(seq, None)
        if old:
            old.close()
        if sampling.grammar and not self._grammar_vocab.path.is_file():
            raise BadRequest("this ONNX model has no vocab.gguf, so it cannot follow a grammar (format/JSON mode)")
        grammar = self._grammar_vocab.grammar(sampling.grammar) if sampling.grammar else None
        self._samplers[seq] = Sampler(sampling, grammar)

    def logprobs(self, seq: int) -> TokenLogprobs | None:
        sampler = self._samplers.get(seq)
        return sampler.last_logprobs if sampler is not None else None

    # ---- decoding ------------------------------------------------------------------------------------------
    def _generator(self, seq: int) -> Any:
        gen = self._gens.get(seq)
        if gen is None:
            params = self._og.GeneratorParams(self._model)
            params.set_search_options(max_length=self.max_length, past_present_share_buffer=False)
            gen = self._og.Generator(self._model, params)
            self._gens[seq] = gen
        return gen

    def cached(self, seq: int) -> int:
        gen = self._gens.get(seq)
        return int(gen.token_count()) if gen is not None else 0

    def step(self, batch: Sequence[SequenceStep]) -> dict[int, int]:
        """Feed each listed sequence in turn (genai cannot batch separate generators)."""
        results: dict[int, int] = {}
        for item in batch:
            if not item.tokens:
                continue
            gen = self._generator(item.seq)
            before = int(gen.token_count())
            if before + len(item.tokens) > self.max_length:
                raise CorralError("the context is full: no room left in the KV cache (raise num_ctx)")
            try:
                gen.append_tokens(np.asarray(item.tokens, dtype=np.int32))
            except Exception as exc:
                self.truncate(item.seq, before)
                raise CorralError(f"onnxruntime-genai failed to decode: {exc}") from None
            if item.sample:
                sampler = self._samplers.get(item.seq)
                if sampler is None:
                    sampler = self._samplers[item.seq] = Sampler(Sampling())
                results[item.seq] = sampler.pick(np.asarray(gen.get_logits())[0, -1])
        return results

    def truncate(self, seq: int, keep: int) -> int:
        gen = self._gens.get(seq)
        if gen is None:
            return 0
        count = int(gen.token_count())
        keep = max(0, min(keep, count))
        if keep == 0:
            del self._gens[seq]  # a fresh generator is cheaper than rewinding to nothing
            return 0
        if keep == count:
            return keep
        try:
            gen.rewind_to(keep)
        except Exception:  # a model whose cache cannot drop a tail: rebuild it from the kept tokens
            kept = np.asarray(gen.get_sequence(0), dtype=np.int32)[:keep]
            del self._gens[seq]
            self._generator(seq).append_tokens(kept)
        return keep

    # ---- embeddings ------------------------------------------------------------------------------------------
    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        out: list[list[float]] = []
        for text in texts:
            tokens = self.tokenize(text, add_bos=self.info.add_bos) or [self.info.bos_token or 0]
            if len(tokens) > self.max_length:
                raise PromptTooLong(f"input is {len(tokens)} tokens, more than the context of {self.max_length}")
            params = self._og.GeneratorParams(self._model)
            params.set_search_options(max_length=max(len(tokens), 1), past_present_share_buffer=False)
            gen = self._og.Generator(self._model, params)
            gen.append_tokens(np.asarray(tokens, dtype=np.int32))
            try:
                hidden = np.asarray(gen.get_output("hidden_states"), dtype=np.float32).reshape(-1, self.info.n_embd)
            except Exception:  # the graph has no hidden_states output (built without include_hidden_states)
                raise BadRequest("this engine does not support embeddings for this model") from None
            out.append(hidden.mean(axis=0).astype(float).tolist())
            del gen
        return out

    def close(self) -> None:
        for sampler in self._samplers.values():
            sampler.close()
        self._samplers.clear()
        self._gens.clear()
        self._grammar_vocab.close()
        self._model = None


def cuda_build_problem() -> str | None:
    """Why the installed onnxruntime-genai cannot use CUDA, or None. Ask this only after NVML found a GPU:
    onnxruntime-gpu lists the CUDA provider even on machines without one."""
    try:
        import onnxruntime_genai as og
    except ImportError:
        return "onnxruntime-genai is not installed (pip install onnxruntime-genai-cuda)"
    if not og.is_cuda_available():
        return "the installed onnxruntime-genai is a CPU build (pip install onnxruntime-genai-cuda)"
    return None
