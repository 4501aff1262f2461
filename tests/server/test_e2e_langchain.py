"""End to end: LangChain's ChatOllama (invoke, stream, batch, structured output) and OllamaEmbeddings
against a real `corral serve` with the bundled SmolLM2. OllamaEmbeddings sends retired Ollama options
(mirostat, tfs_z, ...), which Corral ignores with a warning, as Ollama does."""

from __future__ import annotations

import math

import pytest
from langchain_ollama import ChatOllama, OllamaEmbeddings
from pydantic import BaseModel

pytestmark = pytest.mark.slow

MODEL = "smollm2:135m"


class City(BaseModel):
    name: str
    country: str


def test_chat_ollama_invoke_stream_and_batch(corral_server: str) -> None:
    llm = ChatOllama(model=MODEL, base_url=corral_server, temperature=0, num_predict=24)
    answer = llm.invoke("What is the capital of France?")
    assert "Paris" in answer.content
    assert answer.usage_metadata and answer.usage_metadata["output_tokens"] <= 24
    chunks = list(llm.stream("What is the capital of France?"))
    assert len(chunks) > 3 and "".join(str(c.content) for c in chunks) == answer.content
    batch = llm.batch(["What is the capital of France?", "Say hello."])
    assert len(batch) == 2 and batch[0].content == answer.content and batch[1].content


def test_chat_ollama_structured_output(corral_server: str) -> None:
    llm = ChatOllama(model=MODEL, base_url=corral_server, temperature=0, num_predict=60)
    city = llm.with_structured_output(City, method="json_schema").invoke("Paris is a city in France. Give its name and country.")
    assert isinstance(city, City) and city.name and city.country


def test_ollama_embeddings(corral_server: str) -> None:
    embeddings = OllamaEmbeddings(model=MODEL, base_url=corral_server)
    vectors = embeddings.embed_documents(["The sky is blue.", "Grass is green."])
    assert len(vectors) == 2 and len(vectors[0]) == 576
    assert math.isclose(math.fsum(x * x for x in vectors[0]), 1.0, rel_tol=1e-6)
    assert len(embeddings.embed_query("Why is the sky blue?")) == 576
