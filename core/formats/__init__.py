"""File formats, read without an engine: the GGUF reader, ONNX model-folder facts, Hugging Face names."""
