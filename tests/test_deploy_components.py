"""deploy/kubernetes/components: each secret source added to each overlay renders, its
core objects validate, and the gateway reads the secret where the component puts it; the
Redis component points the gateway at a store with its password from a Secret. Also the
standalone spread, the sidecar's HPA and the Kyverno example."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.config import load_mapping

from .test_deploy_kubernetes import (
    CRD_KINDS,
    KUBERNETES,
    OVERLAYS,
    VERSIONS,
    Obj,
    gateway_container,
    kubectl,
    of_kind,
    render,
)

COMPONENTS = sorted(p.name for p in (KUBERNETES / "components").iterdir())
SECRET_SOURCES = [c for c in COMPONENTS if c != "redis-limits"]


def render_with(overlay: str, component: str, tmp_path: Path) -> list[Obj]:
    """``overlay`` with ``components: [component]`` added, as an operator would add it
    (a copy of the overlay, its relative paths kept pointing at the repository)."""
    source = KUBERNETES / "overlays" / overlay
    copy = tmp_path / overlay
    shutil.copytree(source, copy)
    kustomization = yaml.safe_load((copy / "kustomization.yaml").read_text())
    kustomization["resources"] = [
        os.path.relpath((source / r).resolve(), copy) if (source / r).is_dir() else r
        for r in kustomization["resources"]
    ]
    kustomization["components"] = [os.path.relpath(KUBERNETES / "components" / component, copy)]
    (copy / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    result = subprocess.run(
        [kubectl(), "kustomize", str(copy)], capture_output=True, text=True, check=True
    )
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def pod_and_settings(objects: list[Obj]) -> tuple[Obj, Obj, Any]:
    """The pod spec, the gateway container, and the settings it runs with (its config
    file with its ALEACC_GATEWAY_* variables over it)."""
    (deployment,) = of_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]
    gateway = gateway_container(pod["spec"])
    (config_map,) = of_kind(objects, "ConfigMap")
    environ = {e["name"]: e["value"] for e in gateway.get("env", []) if "value" in e}
    settings = load_mapping(tomllib.loads(config_map["data"]["gateway.toml"]), environ).settings
    return pod, gateway, settings


def test_there_are_four_components() -> None:
    assert COMPONENTS == ["external-secrets", "redis-limits", "secrets-store-csi", "vault-agent"]


@pytest.mark.parametrize("component", SECRET_SOURCES)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_component_renders_with_each_overlay(
    overlay: str, component: str, tmp_path: Path
) -> None:
    objects = render_with(overlay, component, tmp_path)
    for obj in objects:
        if obj["kind"] not in CRD_KINDS | {"ExternalSecret", "SecretProviderClass"}:
            kubernetes_validate.validate(obj, VERSIONS[-1], strict=True)
    pod, gateway, settings = pod_and_settings(objects)
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {Path(m["mountPath"]): m for m in gateway["volumeMounts"]}
    assert all("subPath" not in m for m in gateway["volumeMounts"])
    secret_dir = settings.signing.secret_file.parent
    if component == "external-secrets":
        (external,) = of_kind(objects, "ExternalSecret")
        volume = volumes[mounts[secret_dir]["name"]]
        assert external["spec"]["target"]["name"] == volume["secret"]["secretName"]
        keys = [d["secretKey"] for d in external["spec"]["data"]]
        assert keys == [item["key"] for item in volume["secret"]["items"]] == ["api-secret"]
    elif component == "secrets-store-csi":
        (provider,) = of_kind(objects, "SecretProviderClass")
        volume = volumes[mounts[secret_dir]["name"]]
        assert "secret" not in volume
        assert volume["csi"]["driver"] == "secrets-store.csi.k8s.io"
        assert (
            volume["csi"]["volumeAttributes"]["secretProviderClass"]
            == (provider["metadata"]["name"])
        )
        objects_in_store = yaml.safe_load(provider["spec"]["parameters"]["objects"])
        assert [o["objectName"] for o in objects_in_store] == [settings.signing.secret_file.name]
    else:
        annotations = pod["metadata"]["annotations"]
        assert annotations["vault.hashicorp.com/agent-inject"] == "true"
        assert "vault.hashicorp.com/agent-inject-template-api-secret" in annotations
        # The gateway reads the agent's file, named by its environment variable.
        assert str(settings.signing.secret_file) == "/vault/secrets/api-secret"
        secrets = [v["secret"]["secretName"] for v in volumes.values() if "secret" in v]
        assert "aleacc-api-secret" not in secrets
        token = volumes[annotations["vault.hashicorp.com/agent-service-account-token-volume-name"]]
        assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "vault"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_redis_component_points_every_overlay_at_the_store(
    overlay: str, tmp_path: Path
) -> None:
    objects = render_with(overlay, "redis-limits", tmp_path)
    for obj in objects:
        if obj["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(obj, VERSIONS[-1], strict=True)
    pod, gateway, settings = pod_and_settings(objects)
    limits = settings.limits
    assert limits.store_url.startswith("redis://")
    # The password from a Secret mounted as a directory; never in the URL or a value.
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {Path(m["mountPath"]): m for m in gateway["volumeMounts"]}
    volume = volumes[mounts[limits.store_password_file.parent]["name"]]
    assert volume["secret"]["secretName"] == "aleacc-redis-password"
    assert [item["path"] for item in volume["secret"]["items"]] == [limits.store_password_file.name]
    assert not [e for e in gateway["env"] if "PASSWORD" in e["name"] and "FILE" not in e["name"]]
    # Where the overlay restricts egress, Redis's port is let through.
    for policy in of_kind(objects, "NetworkPolicy"):
        ports = [p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])]
        assert 6379 in ports
    assert bool(of_kind(objects, "NetworkPolicy")) == overlay.startswith("standalone")


def test_no_checksum_annotation_turns_a_rotation_into_a_rollout() -> None:
    # The Helm chart's one checksum follows its ConfigMap alone: a configuration change
    # rolls the pods, a secret's does not (tests/test_helm.py renders both).
    chart = KUBERNETES.parent / "helm"
    for path in (KUBERNETES.parent).rglob("*.yaml"):
        allowed = {"checksum/config"} if path.is_relative_to(chart) else set()
        assert set(re.findall(r"checksum/[\w.-]*", path.read_text())) <= allowed, path


def test_standalone_replicas_spread_over_zones_and_nodes() -> None:
    (deployment,) = of_kind(render("standalone"), "Deployment")
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert [c["topologyKey"] for c in spread] == [
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    ]
    assert all(c["labelSelector"]["matchLabels"] == selector for c in spread)


def test_the_sidecar_hpa_scales_on_the_frontends_own_cpu() -> None:
    objects = render("sidecar")
    (hpa,) = of_kind(objects, "HorizontalPodAutoscaler")
    (deployment,) = of_kind(objects, "Deployment")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "ContainerResource"
    assert metric["containerResource"]["container"] == "frontend"


def test_the_kyverno_example_injects_the_sidecar_overlays_container() -> None:
    policy = yaml.safe_load((KUBERNETES / "examples" / "kyverno-inject-sidecar.yaml").read_text())
    assert (policy["apiVersion"], policy["kind"]) == ("kyverno.io/v1", "ClusterPolicy")
    (rule,) = policy["spec"]["rules"]
    patch = rule["mutate"]["patchStrategicMerge"]
    assert patch["metadata"]["annotations"] == {"(aleacc-gateway/inject)": "true"}
    (injected,) = patch["spec"]["initContainers"]
    (deployment,) = of_kind(render("sidecar"), "Deployment")
    sidecar = gateway_container(deployment["spec"]["template"]["spec"])
    # The same container but for its name and its volumes' names (prefixed in a pod
    # that is not ours).
    mounts = {m["mountPath"]: m.get("readOnly") for m in injected["volumeMounts"]}
    assert mounts == {m["mountPath"]: m.get("readOnly") for m in sidecar["volumeMounts"]}
    same = (
        "args",
        "image",
        "ports",
        "livenessProbe",
        "readinessProbe",
        "resources",
        "securityContext",
        "restartPolicy",
    )
    assert {k: injected[k] for k in same} == {k: sidecar[k] for k in same}
