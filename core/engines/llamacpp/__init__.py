"""llama.cpp through llama-cpp-python: the runner, its GPU offload planner, grammar and quantize."""
