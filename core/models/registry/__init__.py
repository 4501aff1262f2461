"""Pull and push models over the registry protocol Ollama speaks (OCI distribution v2).

``http`` talks to one registry (tokens, retries), ``pull`` downloads, ``push`` uploads.

    GET  {scheme}://{host}/v2/{namespace}/{model}/manifests/{tag}
    GET  {scheme}://{host}/v2/{namespace}/{model}/blobs/{digest}        (with Range for parts)
    HEAD {scheme}://{host}/v2/{namespace}/{model}/blobs/{digest}
    POST {scheme}://{host}/v2/{namespace}/{model}/blobs/uploads/        -> Location
    PUT  {Location}&digest={digest}                                      (monolithic upload)
    PUT  {scheme}://{host}/v2/{namespace}/{model}/manifests/{tag}

The scheme is https; ``insecure=True`` uses plain http instead (as Ollama does: there is no
special case for localhost). A ``401`` with a ``Bearer`` challenge is answered by fetching a token
from the challenge's realm (``GET realm?service=..&scope=..``) and retrying once.

A pull downloads each missing blob into ``<store>/blobs/sha256-<hex>-partial``: big blobs in
parallel HTTP Range parts, each written at its offset. A sidecar ``...-partial.json`` records how
far each part has got; it is only ever rewritten after the bytes it counts have been fsynced, so a
pull that is interrupted -- even by SIGKILL -- resumes where each part stopped. A part that gets no
bytes for ``stall_timeout`` seconds is cancelled and retried from where it stopped, and a worker
that runs out of parts takes over the second half of the slowest one, so one slow connection
cannot hold the pull at 99%. Every blob is verified against its sha256 before it is renamed into
the store; the manifest is written last, under the store lock. On any failure the store holds the
same blobs and manifests as before; only partial downloads (which are not blobs) stay, so the
next pull can resume them.
"""

from corral.models.registry.http import RegistryAuthError, RegistryError
from corral.models.registry.pull import PullStats, pull
from corral.models.registry.push import PushStats, push

__all__ = ["PullStats", "PushStats", "RegistryAuthError", "RegistryError", "pull", "push"]
