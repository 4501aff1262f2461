"""HTTP only: the app factory, Ollama's routes, model management, OpenAI's routes, security."""
