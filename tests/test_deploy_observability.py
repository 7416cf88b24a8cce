"""deploy/prometheus and deploy/grafana reference only what the gateway exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .support import Gateway, Mock, StartGateway, StartRedis, settings_for, system_tool

DEPLOY = Path(__file__).parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "aleacc-gateway.rules.yml"
DASHBOARD = DEPLOY / "grafana" / "aleacc-gateway.json"
METRIC = re.compile(r"\baleacc_gateway_[a-z_]+\b")  # raw series; recorded ones have colons
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}


async def exported_series(gateway: Gateway) -> set[str]:
    """Every series name the running gateway can expose, from its own /metrics."""
    async with aiohttp.ClientSession() as client, client.get(gateway.admin_url / "metrics") as r:
        text = await r.text()
    return {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in SUFFIXES[family.type]
    }


def rule_list() -> list[dict[str, object]]:
    return [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]


def test_alerts_have_severity_summary_and_runbook() -> None:
    alerts = [r for r in rule_list() if "alert" in r]
    assert {a["alert"] for a in alerts} == {
        "AleaccGateway403RatioHigh",
        "AleaccGateway401Spike",
        "AleaccGatewaySigningFailures",
        "AleaccGatewayClockSkew",
        "AleaccGatewayClockCorrectionRefused",
        "AleaccGatewayUpstreamErrors",
        "AleaccGatewayRateLimited",
        "AleaccGatewaySecretReloadFailed",
        "AleaccGatewayCertificateExpiresSoon",
        "AleaccGatewayRateLimitStoreDown",
    }
    for alert in alerts:
        assert alert["labels"]["severity"] in ("critical", "warning")  # type: ignore[index]
        assert alert["annotations"]["summary"]  # type: ignore[index]
        assert alert["annotations"]["runbook"]  # type: ignore[index]


def test_recording_rules_cover_the_ratios_and_latency() -> None:
    recorded = {r["record"] for r in rule_list() if "record" in r}
    for name in (
        "aleacc_gateway:upstream_401_ratio:rate5m",
        "aleacc_gateway:upstream_403_ratio:rate5m",
        "aleacc_gateway:signing_failures:rate5m",
        "aleacc_gateway:request_duration_seconds:p99_5m",
    ):
        assert name in recorded


async def test_rules_and_dashboard_name_only_exported_metrics(
    mock: Mock, start_gateway: StartGateway, redis_server: StartRedis
) -> None:
    # With a rate-limit store: its gauge is exported only then.
    store = await redis_server()
    gateway = await start_gateway(settings_for(mock.url, limits={"store_url": store.url}))
    exported = await exported_series(gateway)
    named_in_rules = set(METRIC.findall(RULES.read_text()))
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    named_in_dashboard = set(METRIC.findall(" ".join(exprs)))
    assert named_in_rules - exported == set()
    assert named_in_dashboard - exported == set()
    # Every family docs/observability.md names appears somewhere an operator looks.
    families = {
        name.rsplit("_", 1)[0] if name.endswith(("_total", "_bucket")) else name
        for name in named_in_dashboard
    }
    for family in (
        "aleacc_gateway_requests",
        "aleacc_gateway_upstream_responses",
        "aleacc_gateway_signing_failures",
        "aleacc_gateway_upstream_errors",
        "aleacc_gateway_request_duration_seconds",
        "aleacc_gateway_upstream_duration_seconds",
        "aleacc_gateway_in_flight_requests",
        "aleacc_gateway_clock_skew_seconds",
        "aleacc_gateway_clock_correction_seconds",
        "aleacc_gateway_rate_limited",
        "aleacc_gateway_rate_limit_store_up",
        "aleacc_gateway_rate_limit_store_errors",
        "aleacc_gateway_rate_limit_store_duration_seconds",
    ):
        assert family in families, family


def test_dashboard_panels_are_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "job", "tenant"}


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run(
        [system_tool("promtool"), "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_fire_the_alerts() -> None:
    result = subprocess.run(
        [system_tool("promtool"), "test", "rules", "rules.test.yml"],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
