"""onnxruntime-genai: the runner, the GGUF converter, and the memory fit of an ONNX model."""
