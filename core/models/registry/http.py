"""One registry over HTTP: bearer-token challenges answered once, retries with backoff, the
registry's own words in every error."""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterator

import httpx

from corral.errors import CorralError
from corral.models.names import ModelName
from corral.version import __version__

MiB = 1 << 20
Progress = Callable[[dict], None]

RETRY_STATUSES = {408, 429, 500, 502, 503, 504}


class RegistryError(CorralError):
    """The registry could not be reached, refused us, or sent something wrong."""


class RegistryAuthError(RegistryError):
    """The registry asked for credentials Corral cannot give, or refused the token it issued."""


# ---- HTTP: one registry, with bearer tokens and retries --------------------------------------


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'([A-Za-z_]+)="([^"]*)"', rest)}
    for k, v in re.findall(r'([A-Za-z_]+)=([^",\s]+)', rest):
        params.setdefault(k.lower(), v)
    return scheme.lower(), params


def describe(resp: httpx.Response) -> str:
    """The registry's own words: ``{"errors":[{"code":..,"message":..}]}`` or the start of the body."""
    try:
        text = resp.text
    except (httpx.HTTPError, UnicodeDecodeError):
        text = ""
    try:
        errors = json.loads(text).get("errors") or []
        words = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors)
        if words:
            return words
    except (ValueError, AttributeError):
        pass
    return text.strip()[:200] or resp.reason_phrase


class Registry:
    def __init__(
        self,
        name: ModelName,
        *,
        insecure: bool,
        timeout: float,
        max_tries: int,
        backoff: float,
        cancel: threading.Event | None,
    ) -> None:
        self.name = name
        self.host = name.host
        self.base = f"{'http' if insecure else 'https'}://{name.host}"
        self.repo_url = f"{self.base}/v2/{name.namespace}/{name.model}"
        self.max_tries = max(1, max_tries)
        self.backoff = backoff
        self.cancel = cancel
        self.client = httpx.Client(
            follow_redirects=True,  # httpx drops Authorization when a redirect leaves the registry's origin
            timeout=httpx.Timeout(timeout, connect=max(timeout, 10.0)),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            headers={"User-Agent": f"corral/{__version__}"},
        )
        self._token: str | None = None
        self._token_lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    def blob_url(self, digest: str) -> str:
        return f"{self.repo_url}/blobs/{digest}"

    def manifest_url(self) -> str:
        return f"{self.repo_url}/manifests/{self.name.tag}"

    def sleep_backoff(self, attempt: int) -> None:
        delay = min(self.backoff * (2**attempt), 30.0) * random.uniform(0.75, 1.25)
        if self.cancel is not None:
            if self.cancel.wait(delay):
                raise CorralError("cancelled")
        else:
            time.sleep(delay)

    def send(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        body: Callable[[], bytes | Iterator[bytes]] | None = None,
        stream: bool = False,
        timeout: float | None = None,
    ) -> httpx.Response:
        """One request; a 401 with a Bearer challenge is answered once. Transport errors propagate."""
        fetched_token = False
        while True:
            hdrs = dict(headers or {})
            token = self._token
            if token:
                hdrs["Authorization"] = f"Bearer {token}"
            request = self.client.build_request(
                method,
                url,
                headers=hdrs,
                content=body() if body else None,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
            resp = self.client.send(request, stream=stream)
            if resp.status_code != 401:
                return resp
            challenge = resp.headers.get("WWW-Authenticate", "")
            resp.close()
            if fetched_token:
                raise RegistryAuthError(
                    f"registry {self.host} answered 401 unauthorized to {method} {httpx.URL(url).path} "
                    "even with the token its auth server issued"
                )
            self._authenticate(challenge, token)
            fetched_token = True

    def _authenticate(self, challenge: str, used_token: str | None) -> None:
        with self._token_lock:
            if self._token != used_token:  # another thread already fetched a fresh token
                return
            scheme, params = _parse_challenge(challenge)
            if scheme == "basic":
                raise RegistryAuthError(
                    f"registry {self.host} asks for HTTP Basic authentication, which Corral does not support "
                    "(it supports anonymous access and Bearer tokens)"
                )
            if scheme != "bearer" or not params.get("realm"):
                raise RegistryAuthError(
                    f"registry {self.host} answered 401 unauthorized without a Bearer challenge "
                    f"(WWW-Authenticate: {challenge or 'missing'})"
                )
            realm = params["realm"]
            if not realm.startswith(("https://", "http://")):
                raise RegistryAuthError(f"registry {self.host} sent a token realm that is not an URL: {realm}")
            query = {k: params[k] for k in ("service", "scope") if params.get(k)}
            try:
                resp = self.client.get(realm, params=query)
            except httpx.HTTPError as exc:
                raise RegistryAuthError(f"cannot reach the token server {realm} of {self.host}: {exc}") from None
            if resp.status_code != 200:
                raise RegistryAuthError(
                    f"the token server {realm} of {self.host} answered {resp.status_code}: {describe(resp)}"
                )
            try:
                data = resp.json()
                token = data.get("token") or data.get("access_token")
            except (ValueError, AttributeError):
                token = None
            if not token or not isinstance(token, str):
                raise RegistryAuthError(f"the token server {realm} of {self.host} sent no token")
            self._token = token

    def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        headers: dict[str, str] | None = None,
        body: Callable[[], bytes | Iterator[bytes]] | None = None,
        timeout: float | None = None,
        on_retry: Callable[[], None] | None = None,
    ) -> httpx.Response:
        """``send`` with retries (exponential backoff) on connection errors and 5xx/429. Body read."""
        for attempt in range(self.max_tries):
            last = attempt == self.max_tries - 1
            try:
                resp = self.send(method, url, headers=headers, body=body, timeout=timeout)
            except httpx.TransportError as exc:
                if last:
                    raise RegistryError(
                        f"{what}: cannot reach registry {self.host} after {self.max_tries} tries: "
                        f"{type(exc).__name__}: {exc}"
                    ) from None
            else:
                if resp.status_code not in RETRY_STATUSES:
                    return resp
                if last:
                    raise RegistryError(
                        f"{what}: registry {self.host} answered {resp.status_code} after "
                        f"{self.max_tries} tries: {describe(resp)}"
                    )
            if on_retry is not None:
                on_retry()
            self.sleep_backoff(attempt)
        raise AssertionError("unreachable")
