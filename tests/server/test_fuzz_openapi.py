"""A property test: schemathesis fuzzes every route of Corral's own /openapi.json, with valid and
invalid bodies, against a real `corral serve` with the bundled SmolLM2, and no answer may be a 5xx
other than a deliberate 503 (the queue is full). The examples are bounded so it takes minutes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

from serverproc import running_server

pytestmark = pytest.mark.slow

# A small context keeps any generated num_predict short; the proxy variables make a fuzzed pull or
# push fail at once instead of waiting on a registry this machine may not reach.
MODEL = "smollm2:135m"
USES_THE_MODEL = {
    "/api/generate",
    "/api/chat",
    "/api/embed",
    "/api/embeddings",
    "/api/show",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
}
EXAMPLES = 8  # per route and mode: about 350 requests, a few minutes on two cores
SERVER_ENV = {
    "CORRAL_NUM_CTX": "256",
    "CORRAL_NUM_PARALLEL": "2",
    "CORRAL_KEEP_ALIVE": "-1",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost",
}


@pytest.fixture(scope="module")
def fuzz_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home: Path = tmp_path_factory.mktemp("fuzz-home")
    with running_server(home, **SERVER_ENV) as url:
        yield url


MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)


def test_no_route_answers_a_server_error(fuzz_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20  # both APIs and model management, as /openapi.json lists them
    failures: list[str] = []
    calls: dict[str, int] = {}
    answered: set[str] = set()  # routes where the real model answered a fuzzed request

    for operation in operations:
        for mode in MODES:
            strategy = operation.as_strategy(generation_mode=mode)
            if operation.path in USES_THE_MODEL:
                strategy = strategy.map(_with_the_real_model)

            @given(case=strategy)
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def fuzz(case: schemathesis.Case) -> None:
                response = case.call(timeout=120)
                # fuzz() runs within this iteration, so `operation` is the one it was made for.
                calls[operation.label] = calls.get(operation.label, 0) + 1  # noqa: B023
                if response.status_code == 200 and isinstance(case.body, dict) and case.body.get("model") == MODEL:
                    answered.add(operation.path)  # noqa: B023
                if response.status_code >= 500 and response.status_code != 503:
                    failures.append(f"{response.status_code} {response.text[:200]}\n  {case.as_curl_command()}")

            try:
                fuzz()
            except Unsatisfiable:  # a route with no parameters or body has no invalid input
                assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
    assert not failures, "\n".join(failures[:10])
    assert set(calls) == {op.label for op in operations}  # every route was called
    assert answered >= {"/api/generate", "/api/chat", "/api/embed"}, answered


def _with_the_real_model(case: schemathesis.Case) -> schemathesis.Case:
    """Half of the valid bodies name the real model, so fuzzed options reach the engine, not a 404."""
    if isinstance(case.body, dict) and "model" in case.body and len(str(case.body["model"])) % 2 == 0:
        case.body["model"] = MODEL
    return case
