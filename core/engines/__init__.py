"""Engines shared by more than one backend; the only importers of llama_cpp and onnxruntime_genai."""
