"""ONNX model folders in onnxruntime-genai's layout: how to recognise one and the files Corral adds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Written beside a converted model: the vocabulary for llama.cpp's grammar sampler, and where it came from.
VOCAB_GGUF = "vocab.gguf"
PROVENANCE = "corral-onnx.json"


def is_genai_folder(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "genai_config.json").is_file()


def read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
