"""deploy/helm/aleacc-gateway: linted and rendered by Helm's own engine (helm-python-sdk,
the `helm` extra), every object validated offline, every rendered configuration checked by
the real `check-config`, and the default gateway container the standalone overlay's.

Locally these skip without the extra; CI (CI set) installs it and never skips them."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.config import AccessSettings, Settings, load_mapping

from .helm_reference import CHART, OPERATIONS, ROOT, SCHEMA, generated_schema, operations_page
from .test_deploy_components import pod_and_settings, render_with
from .test_deploy_kubernetes import VERSIONS, Obj, gateway_container, of_kind
from .test_deploy_kubernetes import render as kustomize

needs_helm = pytest.mark.skipif(
    importlib.util.find_spec("helm_python") is None and not os.environ.get("CI"),
    reason="helm-python-sdk is not installed: pip install -c constraints.txt -e '.[helm]'",
)

RELEASE = "aleacc-gateway"
NAMESPACE = "casino"
EXAMPLES = {p.stem: p for p in sorted((CHART / "examples").glob("*.yaml"))}
SEPARATOR = '\n\t"<&>\\ é'  # JSON escapes HTML characters, TOML reads them back
MONITORING = {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}
# Each layout the chart offers: the example values files, and a few switches.
LAYOUTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "hpa-off": {"autoscaling": {"enabled": False}},
    "networkpolicy-off": {"networkPolicy": {"enabled": False}},
    "monitoring": {**MONITORING, "grafanaDashboard": {"enabled": True}},
    "kyverno-sidecar": {"kyvernoSidecarPolicy": {"enabled": True}},
    "raw-config": {"config": (ROOT / "deploy/kubernetes/base/gateway.toml").read_text()},
    "env": {"extraEnv": [{"name": "ALEACC_GATEWAY_SERVER_WORKERS", "value": "2"}]},
    "null-drops-a-default": {"settings": {"client_ip": None, "access": {"allowed_clients": None}}},
    "escapes": {
        "settings": {"signing": {"separator": SEPARATOR}, "limits": {"max_body_bytes": 2**24}}
    },
    # A managed Redis over TLS outside the cluster: a user name, its CA, its addresses.
    "limits-store-tls": {
        "limitsStore": {
            "url": "rediss://gateway@redis1.example.internal:6380/0",
            "ca": {"configMap": "redis-ca"},
            "cidrs": ["10.30.0.0/24"],
        },
        "settings": {"limits": {"on_store_error": "refuse", "store_key_prefix": "casino"}},
    },
}
# Objects of other projects' CRDs have no offline schema: the tests below check them.
CRD_KINDS = {
    "ServiceMonitor",
    "PrometheusRule",
    "ExternalSecret",
    "SecretProviderClass",
    "Certificate",
    "ClusterPolicy",
}


def values_of(layout: str) -> dict[str, Any]:
    """A layout's values, an example file read as `helm -f` reads it."""
    import helm_python

    if layout in EXAMPLES:
        return helm_python.values_from_yaml(EXAMPLES[layout].read_text())
    return LAYOUTS[layout]


def render_values(values: dict[str, Any]) -> list[Obj]:
    import helm_python

    with helm_python.Chart.load(CHART) as chart:
        manifests = chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    return [
        doc
        for name, text in sorted(manifests.items())
        if name.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


@functools.cache
def _render(layout: str) -> str:
    return json.dumps(render_values(values_of(layout)))


def render(layout: str) -> list[Obj]:
    return list(json.loads(_render(layout)))  # a fresh copy: tests may change it


ALL = sorted([*LAYOUTS, *EXAMPLES])


def deployment_of(objects: list[Obj]) -> Obj:
    (deployment,) = of_kind(objects, "Deployment")
    return deployment


def config_of(objects: list[Obj]) -> str:
    (config_map,) = (
        o for o in of_kind(objects, "ConfigMap") if o["metadata"]["name"].endswith("-config")
    )
    text: str = config_map["data"]["gateway.toml"]
    return text


def environ_of(gateway: Obj) -> dict[str, str]:
    return {e["name"]: e["value"] for e in gateway.get("env", []) if "value" in e}


def settings_of(objects: list[Obj]) -> Settings:
    gateway = gateway_container(deployment_of(objects)["spec"]["template"]["spec"])
    return load_mapping(tomllib.loads(config_of(objects)), environ_of(gateway)).settings


def test_the_examples_are_the_layouts_documented() -> None:
    assert sorted(EXAMPLES) == [
        "egress-proxy",
        "external-secrets",
        "redis-limits",
        "secrets-store-csi",
        "tenants",
        "tls",
        "tracing",
        "vault-agent",
    ]


@needs_helm
def test_lint_strict_is_clean() -> None:
    import helm_python

    for layout in ALL:
        report = helm_python.lint(CHART, values_of(layout), strict=True, namespace=NAMESPACE)
        assert report["errors"] == [], (layout, report)
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert problems == [], (layout, problems)


@needs_helm
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("layout", ALL)
def test_every_object_validates_against_the_schemas(layout: str, version: str) -> None:
    for obj in render(layout):
        if obj["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(obj, version, strict=True)


@needs_helm
@pytest.mark.parametrize("layout", ALL)
def test_every_rendered_configuration_passes_check_config(layout: str, tmp_path: Path) -> None:
    objects = render(layout)
    gateway = gateway_container(deployment_of(objects)["spec"]["template"]["spec"])
    config = tmp_path / "gateway.toml"
    config.write_text(config_of(objects))
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "aleacc-gateway"),
            "check-config",
            "--config",
            str(config),
        ],
        env={**os.environ, **environ_of(gateway)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_helm
@pytest.mark.parametrize("layout", ALL)
def test_every_file_the_configuration_names_is_mounted(layout: str) -> None:
    objects = render(layout)
    pod = deployment_of(objects)["spec"]["template"]
    spec = pod["spec"]
    gateway = gateway_container(spec)
    settings = settings_of(objects)
    files = [t.secret_file for t in settings.every_tenant]
    if settings.server.tls is not None:
        files += settings.server.tls.files
    files.append(settings.upstream.proxy_auth_file)
    files += [settings.limits.store_password_file, settings.limits.store_ca_file]
    mounts = {Path(m["mountPath"]): m for m in gateway["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    for file in files:
        if file is None:
            continue
        if file.parent == Path("/vault/secrets"):  # the Vault agent's own volume
            assert pod["metadata"]["annotations"]["vault.hashicorp.com/agent-inject"] == "true"
            continue
        mount = mounts[file.parent]
        assert "subPath" not in mount  # a subPath mount never sees a rotation
        volume = volumes[mount["name"]]
        items = volume.get("secret", volume.get("configMap", {})).get("items")
        if items is not None:
            assert file.name in [item["path"] for item in items], file
    # Secrets only as files: never in the environment.
    for env in gateway.get("env", []):
        assert "secretKeyRef" not in env.get("valueFrom", {})
    assert "envFrom" not in gateway
    grace = spec["terminationGracePeriodSeconds"]
    assert settings.server.drain_delay_s + settings.server.drain_timeout_s < grace


@needs_helm
@pytest.mark.parametrize("layout", ALL)
def test_security_invariants(layout: str) -> None:
    objects = render(layout)
    spec = deployment_of(objects)["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    gateway = gateway_container(spec)
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    admin = next(p for p in gateway["ports"] if p["name"] == "admin")["containerPort"]
    assert settings_of(objects).server.admin_listen.port == admin
    (account,) = of_kind(objects, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == account["metadata"]["name"]


@needs_helm
def test_the_default_gateway_container_is_the_standalone_overlays() -> None:
    chart = deployment_of(render("defaults"))["spec"]["template"]["spec"]
    overlay = deployment_of(kustomize("standalone"))["spec"]["template"]["spec"]
    # image, args, ports, probes, securityContext, resources, mounts: all of it.
    assert gateway_container(chart) == gateway_container(overlay)
    for key in ("securityContext", "automountServiceAccountToken", "terminationGracePeriodSeconds"):
        assert chart[key] == overlay[key], key
    volumes = {v["name"]: v for v in chart["volumes"]}
    for volume in overlay["volumes"]:
        if volume["name"] != "config":  # kustomize suffixes its ConfigMap's name
            assert volumes[volume["name"]] == volume
    spread = [
        (c["topologyKey"], c["whenUnsatisfiable"]) for c in chart["topologySpreadConstraints"]
    ]
    assert spread == [
        (c["topologyKey"], c["whenUnsatisfiable"]) for c in overlay["topologySpreadConstraints"]
    ]
    # The same configuration, but for the order of its keys.
    assert tomllib.loads(config_of(render("defaults"))) == tomllib.loads(
        (ROOT / "deploy/kubernetes/base/gateway.toml").read_text()
    )


@needs_helm
def test_the_defaults_render_the_standalone_objects() -> None:
    objects = render("defaults")
    # The standalone overlay's, with a Service for metrics where it has a PodMonitor
    # (the ServiceMonitor comes where the cluster has its API).
    overlay = [o["kind"] for o in kustomize("standalone") if o["kind"] != "PodMonitor"]
    assert sorted(o["kind"] for o in objects) == sorted([*overlay, "Service"])
    deployment = deployment_of(objects)
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    (hpa,) = of_kind(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (pdb,) = of_kind(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    services = {s["metadata"]["name"]: s for s in of_kind(objects, "Service")}
    assert services[RELEASE]["spec"]["ports"] == [
        {"name": "proxy", "port": 8080, "targetPort": "proxy"}
    ]
    assert services[f"{RELEASE}-metrics"]["spec"]["ports"] == [
        {"name": "admin", "port": 9090, "targetPort": "admin"}
    ]
    assert all(s["spec"]["selector"] == selector for s in services.values())
    (policy,) = of_kind(objects, "NetworkPolicy")
    (overlay_policy,) = of_kind(kustomize("standalone"), "NetworkPolicy")
    assert policy["spec"]["ingress"] == overlay_policy["spec"]["ingress"]
    assert policy["spec"]["egress"] == overlay_policy["spec"]["egress"]
    assert policy["spec"]["podSelector"]["matchLabels"] == selector


@needs_helm
def test_switches_leave_out_their_objects() -> None:
    no_hpa = render("hpa-off")
    assert of_kind(no_hpa, "HorizontalPodAutoscaler") == []
    assert deployment_of(no_hpa)["spec"]["replicas"] == 2
    assert of_kind(render("networkpolicy-off"), "NetworkPolicy") == []


@needs_helm
def test_settings_reach_the_configuration_as_written() -> None:
    escaped = settings_of(render("escapes"))
    assert escaped.signing.scheme.separator == SEPARATOR
    assert escaped.limits.max_body_bytes == 2**24
    assert "max_body_bytes = 16777216\n" in config_of(render("escapes"))  # whole, not 1.6e+07
    dropped = settings_of(render("null-drops-a-default"))
    assert dropped.access == AccessSettings()
    assert "[client_ip]" not in config_of(render("null-drops-a-default"))


@needs_helm
def test_monitoring_objects_carry_the_repositorys_rules_and_dashboard() -> None:
    objects = render("monitoring")
    (monitor,) = of_kind(objects, "ServiceMonitor")
    metrics = next(
        s for s in of_kind(objects, "Service") if s["metadata"]["name"].endswith("-metrics")
    )
    labels = metrics["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["endpoints"] == [
        {"port": "admin", "path": "/metrics", "interval": "15s"}
    ]
    (rule,) = of_kind(objects, "PrometheusRule")
    rules = yaml.safe_load((ROOT / "deploy/prometheus/aleacc-gateway.rules.yml").read_text())
    assert rule["spec"] == rules
    (dashboard,) = (
        o for o in of_kind(objects, "ConfigMap") if o["metadata"]["name"].endswith("-dashboard")
    )
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    grafana = json.loads((ROOT / "deploy/grafana/aleacc-gateway.json").read_text())
    assert json.loads(dashboard["data"]["aleacc-gateway.json"]) == grafana
    # "auto" (the default) asks the cluster; an offline render has no such API.
    assert of_kind(render("defaults"), "ServiceMonitor") == []
    assert of_kind(render("defaults"), "PrometheusRule") == []


def test_the_chart_copies_of_rules_and_dashboard_are_the_repositorys() -> None:
    # Helm reads files inside the chart only; deploy/prometheus and deploy/grafana are the
    # sources, and files/ must be copied from them after each change.
    for source in ("prometheus/aleacc-gateway.rules.yml", "grafana/aleacc-gateway.json"):
        copy = CHART / "files" / Path(source).name
        assert copy.read_bytes() == (ROOT / "deploy" / source).read_bytes(), (
            f"copy {source} to {copy}"
        )


@needs_helm
def test_tenants_get_their_secret_service_hosts_and_listener() -> None:
    objects = render("tenants")
    settings = settings_of(objects)
    brand_b, brand_c = settings.tenants
    assert brand_b.hosts == frozenset(
        {
            "aleacc-gateway-brand-b",
            f"aleacc-gateway-brand-b.{NAMESPACE}.svc",
            f"aleacc-gateway-brand-b.{NAMESPACE}.svc.cluster.local",
        }
    )
    assert brand_b.rate_per_s == 200
    assert brand_c.listen is not None
    assert brand_c.listen.port == 8081
    assert brand_c.hosts == frozenset({"brand-c.example.internal"})
    deployment = deployment_of(objects)
    spec = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {Path(m["mountPath"]): m for m in gateway_container(spec)["volumeMounts"]}
    secrets = [
        volumes[mounts[t.secret_file.parent]["name"]]["secret"]["secretName"]
        for t in settings.every_tenant
        if t.secret_file is not None
    ]
    assert secrets == [
        "aleacc-api-secret",
        "aleacc-api-secret-brand-b",
        "aleacc-api-secret-brand-c",
    ]
    services = {s["metadata"]["name"]: s for s in of_kind(objects, "Service")}
    assert services["aleacc-gateway-brand-b"]["spec"]["ports"][0]["targetPort"] == "proxy"
    brand_c_port = services["aleacc-gateway-brand-c"]["spec"]["ports"][0]["targetPort"]
    ports = {p["name"]: p["containerPort"] for p in gateway_container(spec)["ports"]}
    assert ports[brand_c_port] == 8081
    (policy,) = of_kind(objects, "NetworkPolicy")
    (own,) = (r for r in policy["spec"]["ingress"] if r["ports"] == [{"port": brand_c_port}])
    assert own["from"][0]["podSelector"]["matchLabels"] == {"aleacc-gateway/tenant": "brand-c"}


@needs_helm
def test_tls_mounts_the_certificates_secret_for_the_listener() -> None:
    objects = render("tls")
    (certificate,) = of_kind(objects, "Certificate")
    assert certificate["spec"]["secretName"] == "aleacc-gateway-tls"
    assert f"aleacc-gateway.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]
    assert certificate["spec"]["usages"] == ["server auth"]
    tls = settings_of(objects).server.tls
    assert tls is not None
    assert tls.client_ca_file is not None
    spec = deployment_of(objects)["spec"]["template"]["spec"]
    (volume,) = (v for v in spec["volumes"] if v["name"] == "tls")
    assert volume["secret"]["secretName"] == certificate["spec"]["secretName"]


@needs_helm
def test_each_secret_source_delivers_the_file_the_gateway_reads() -> None:
    external = render("external-secrets")
    (secret,) = of_kind(external, "ExternalSecret")
    spec = deployment_of(external)["spec"]["template"]["spec"]
    (volume,) = (v for v in spec["volumes"] if v["name"] == "api-secret")
    assert secret["spec"]["target"]["name"] == volume["secret"]["secretName"]
    assert [d["secretKey"] for d in secret["spec"]["data"]] == [volume["secret"]["items"][0]["key"]]

    csi = render("secrets-store-csi")
    (provider,) = of_kind(csi, "SecretProviderClass")
    spec = deployment_of(csi)["spec"]["template"]["spec"]
    (volume,) = (v for v in spec["volumes"] if v["name"] == "api-secret")
    assert volume["csi"]["volumeAttributes"]["secretProviderClass"] == provider["metadata"]["name"]
    stored = yaml.safe_load(provider["spec"]["parameters"]["objects"])
    secret_file = settings_of(csi).signing.secret_file
    assert secret_file is not None
    assert [o["objectName"] for o in stored] == [secret_file.name]

    vault = render("vault-agent")
    pod = deployment_of(vault)["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["vault.hashicorp.com/agent-inject-template-api-secret"] == (
        '{{- with secret "secret/data/aleacc/api-secret" -}}{{ .Data.data.value }}{{- end -}}'
    )
    assert str(settings_of(vault).signing.secret_file) == "/vault/secrets/api-secret"
    assert pod["spec"]["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    token = volumes[annotations["vault.hashicorp.com/agent-service-account-token-volume-name"]]
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "vault"
    assert not [v for v in volumes.values() if "secret" in v]


@needs_helm
def test_egress_proxy_and_tracing_reach_the_configuration_and_the_policy() -> None:
    proxied = render("egress-proxy")
    upstream = settings_of(proxied).upstream
    assert str(upstream.proxy_url) == "http://proxy.internal:3128"
    (policy,) = of_kind(proxied, "NetworkPolicy")
    egress = policy["spec"]["egress"][-1]
    assert egress["to"] == [{"ipBlock": {"cidr": "10.20.0.10/32"}}]
    assert egress["ports"] == [{"port": 3128, "protocol": "TCP"}]

    traced = render("tracing")
    assert str(settings_of(traced).tracing.otlp_endpoint).startswith("http://otel-collector")
    (policy,) = of_kind(traced, "NetworkPolicy")
    assert policy["spec"]["egress"][-1]["ports"] == [{"port": 4318, "protocol": "TCP"}]


def store_volume_and_mount(spec: Obj, name: str) -> tuple[Obj, Obj]:
    (volume,) = (v for v in spec["volumes"] if v["name"] == name)
    (mount,) = (m for m in gateway_container(spec)["volumeMounts"] if m["name"] == name)
    return volume, mount


@needs_helm
def test_the_limits_store_is_the_redis_components(tmp_path: Path) -> None:
    chart = render("redis-limits")
    overlay = render_with("standalone", "redis-limits", tmp_path)
    limits = settings_of(chart).limits
    component = pod_and_settings(overlay)[2].limits
    assert limits.store_url == component.store_url
    assert limits.store_password_file == component.store_password_file
    assert limits.player_rate_per_s == 2
    # The password's Secret, mounted as a directory, as the component mounts it.
    spec = deployment_of(chart)["spec"]["template"]["spec"]
    volume, mount = store_volume_and_mount(spec, "redis-password")
    overlay_volume, overlay_mount = store_volume_and_mount(
        deployment_of(overlay)["spec"]["template"]["spec"], "redis-password"
    )
    assert mount == overlay_mount
    assert {**volume["secret"], "defaultMode": None} == {
        **overlay_volume["secret"],
        "defaultMode": None,
    }
    # Egress to the same pods on the same port, after the same rules.
    (policy,) = of_kind(chart, "NetworkPolicy")
    (overlay_policy,) = of_kind(overlay, "NetworkPolicy")
    assert policy["spec"]["egress"] == overlay_policy["spec"]["egress"]
    # Without a store, none of it.
    defaults = render("defaults")
    assert settings_of(defaults).limits.store_url is None
    names = [v["name"] for v in deployment_of(defaults)["spec"]["template"]["spec"]["volumes"]]
    assert "redis-password" not in names


@needs_helm
def test_a_tls_store_gets_its_ca_and_its_addresses() -> None:
    objects = render("limits-store-tls")
    limits = settings_of(objects).limits
    assert limits.store_url == "rediss://gateway@redis1.example.internal:6380/0"
    assert limits.store_ca_file == Path("/run/secrets/aleacc-redis-ca/ca.crt")
    assert limits.on_store_error == "refuse"
    spec = deployment_of(objects)["spec"]["template"]["spec"]
    volume, mount = store_volume_and_mount(spec, "redis-ca")
    assert volume["configMap"] == {
        "name": "redis-ca",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    assert mount["mountPath"] == str(limits.store_ca_file.parent)
    (policy,) = of_kind(objects, "NetworkPolicy")
    assert policy["spec"]["egress"][-1] == {
        "to": [{"ipBlock": {"cidr": "10.30.0.0/24"}}],
        "ports": [{"port": 6380, "protocol": "TCP"}],
    }
    # No port in the URL: Redis's, not the host name's last digit.
    (policy,) = of_kind(render_values({"limitsStore": {"url": "redis://redis1"}}), "NetworkPolicy")
    assert policy["spec"]["egress"][-1]["ports"] == [{"port": 6379, "protocol": "TCP"}]


@needs_helm
def test_store_values_the_gateway_would_refuse_fail_the_install() -> None:
    import helm_python

    store = "redis://redis.redis:6379/0"
    wrong: list[tuple[dict[str, Any], str]] = [
        ({"url": "redis://:hunter2@redis:6379"}, "limitsStore.url: never a password in the URL"),
        ({"url": store, "ca": {"secret": "ca"}}, "limitsStore.ca: needs a rediss://"),
        (
            {"url": "rediss://r:6379", "ca": {"secret": "ca", "configMap": "ca"}},
            "limitsStore.ca: set secret or configMap, not both",
        ),
        (
            {"url": store, "namespaceSelector": None, "podSelector": None},
            "limitsStore: the store's cidrs, or a namespaceSelector or podSelector",
        ),
    ]
    for values, message in wrong:
        with pytest.raises(helm_python.HelmRenderError) as refused:
            render_values({"limitsStore": values})
        assert message in str(refused.value), values
        assert "hunter2" not in str(refused.value)


@needs_helm
def test_the_kyverno_policy_injects_the_examples_container() -> None:
    (policy,) = of_kind(render("kyverno-sidecar"), "ClusterPolicy")
    example = yaml.safe_load(
        (ROOT / "deploy/kubernetes/examples/kyverno-inject-sidecar.yaml").read_text()
    )
    (rule,) = policy["spec"]["rules"]
    (example_rule,) = example["spec"]["rules"]
    assert rule["match"] == example_rule["match"]
    patch = rule["mutate"]["patchStrategicMerge"]
    example_patch = example_rule["mutate"]["patchStrategicMerge"]
    assert patch["metadata"] == example_patch["metadata"]
    (injected,) = patch["spec"]["initContainers"]
    (expected,) = example_patch["spec"]["initContainers"]
    assert {**injected, "volumeMounts": None} == {**expected, "volumeMounts": None}
    paths = [m["mountPath"] for m in injected["volumeMounts"]]
    assert paths == [m["mountPath"] for m in expected["volumeMounts"]]
    names = {m["name"] for m in injected["volumeMounts"]}
    assert names == {v["name"] for v in patch["spec"]["volumes"]}


def checksum(values: dict[str, Any]) -> str:
    pod = deployment_of(render_values(values))["spec"]["template"]
    value: str = pod["metadata"]["annotations"]["checksum/config"]
    return value


@needs_helm
def test_a_config_change_rolls_the_pods_and_a_secret_change_does_not() -> None:
    base = checksum({})
    assert checksum({"settings": {"limits": {"max_body_bytes": 2097152}}}) != base
    assert checksum({"config": "[upstream]\nurl = 'https://aleacc.example.com/api'\n"}) != base
    # Which Secret, or which key in the store: the file the gateway re-reads changes,
    # its configuration does not.
    assert checksum({"apiSecret": {"secretName": "rotated"}}) == base
    external = {"apiSecret": {"source": "externalSecret"}}
    moved = {
        "apiSecret": {"source": "externalSecret", "externalSecret": {"remoteRef": {"key": "k2"}}}
    }
    first, second = render_values(external), render_values(moved)
    assert deployment_of(first) == deployment_of(second)
    assert of_kind(first, "ExternalSecret") != of_kind(second, "ExternalSecret")
    tls = {"tls": {"enabled": True}}
    assert checksum({"tls": {"enabled": True, "secretName": "renewed"}}) == checksum(tls)
    # The store's URL is configuration; which Secret holds its password is not.
    store = {"url": "redis://redis-master.redis:6379/0"}
    assert checksum({"limitsStore": store}) != base
    assert checksum({"limitsStore": {**store, "passwordSecret": "new", "passwordKey": "pw"}}) == (
        checksum({"limitsStore": store})
    )


@needs_helm
def test_the_schema_refuses_a_misspelt_or_mistyped_value() -> None:
    import helm_python

    # Each message names the value's path, as check-config names a misspelt key.
    wrong: list[tuple[dict[str, Any], str]] = [
        ({"autoscaling": {"enable": False}}, "at '/autoscaling': additional properties 'enable'"),
        ({"settings": {"limits": {"max_body_byte": 1}}}, "'/settings/limits': additional"),
        ({"replicas": "two"}, "at '/replicas': got string, want integer"),
        ({"settings": {"server": {"workers": "4"}}}, "'/settings/server/workers': got string"),
        ({"apiSecret": {"source": "vault"}}, "at '/apiSecret/source'"),
        (
            {"tenants": [{"name": "b", "secretName": "s", "settings": {}}]},
            "missing property 'api_id'",
        ),
        # A key the chart writes from other values is not a setting.
        ({"settings": {"server": {"listen": "0.0.0.0:80"}}}, "properties 'listen' not allowed"),
        ({"settings": {"limits": {"store_url": "redis://r"}}}, "'store_url' not allowed"),
        ({"limitsStore": {"url": "http://redis:6379"}}, "at '/limitsStore/url'"),
    ]
    for values, message in wrong:
        with pytest.raises(helm_python.HelmValuesError) as refused:
            render_values(values)
        assert message in str(refused.value), values


@needs_helm
@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_the_schema_accepts_every_example(example: str) -> None:
    import helm_python

    with helm_python.Chart.load(CHART) as chart:
        chart.validate_schema(chart.merge_values(values_of(example)))


def test_app_version_is_the_packages() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == project["version"]


def test_the_schema_and_the_values_table_are_generated() -> None:
    stale = "stale: run scripts/generate-docs"
    assert json.loads(SCHEMA.read_text()) == generated_schema(), f"{SCHEMA.name} is {stale}"
    assert OPERATIONS.read_text() == operations_page(), f"the values table is {stale}"
