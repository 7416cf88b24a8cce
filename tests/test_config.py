"""Settings validation: every problem reported at once, each naming its key."""

from __future__ import annotations

import re
import socket
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway import signing
from gateway.config import (
    ConfigError,
    ListenAddress,
    TenantSettings,
    declared_keys,
    effective_toml,
    load_file,
    load_mapping,
    reference,
    tables,
)
from gateway.server import ListenError, bind

CONFIG_DIR = Path(__file__).parent.parent / "config"
MINIMAL = {
    "upstream": {"url": "https://aleacc.example.com/api"},
    "signing": {"api_id": "abc", "secret_env": "S"},
}


def merged(**tables: dict[str, object]) -> dict[str, object]:
    data: dict[str, dict[str, object]] = {k: dict(v) for k, v in MINIMAL.items()}
    for table, values in tables.items():
        data.setdefault(table, {}).update(values)
    return data  # type: ignore[return-value]


def problems(data: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_mapping(data)
    return info.value.problems


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_examples_are_valid(path: Path) -> None:
    load_file(path)


def test_defaults() -> None:
    s = load_mapping(MINIMAL).settings
    assert str(s.server.listen) == "127.0.0.1:8080"
    assert str(s.server.admin_listen) == "127.0.0.1:9090"
    assert (s.upstream.connect_timeout_s, s.upstream.timeout_s, s.upstream.retries) == (5, 30, 1)
    assert s.upstream.idle_timeout_s == 4
    assert s.upstream.base_path == "/api"
    assert s.upstream.host_header == "aleacc.example.com"
    assert s.signing.scheme == signing.Scheme()  # Aleacc's scheme (docs/signing.md)
    assert s.signing.scheme.secret_encoding == "hex"
    assert s.signing.scheme.request_id_format == "hex32"
    decimal = load_mapping(merged(signing={"request_id_format": "decimal"})).settings
    assert decimal.signing.scheme.request_id_format == "decimal"
    assert s.limits.max_body_bytes == 1048576
    assert [str(n) for n in s.access.allowed_clients] == ["127.0.0.0/8", "::1/128"]


@pytest.mark.parametrize(
    ("url", "host", "base"),
    [
        ("https://h/api/", "h", "/api"),
        ("https://h", "h", ""),
        ("https://h:443/x", "h", "/x"),
        ("http://h:8081/", "h:8081", ""),
        ("http://[::1]:8081/api", "[::1]:8081", "/api"),
        ("https://H.Example.COM/a%20b", "h.example.com", "/a%20b"),
    ],
)
def test_upstream_host_and_base_path(url: str, host: str, base: str) -> None:
    s = load_mapping(merged(upstream={"url": url})).settings
    assert (s.upstream.host_header, s.upstream.base_path) == (host, base)


@pytest.mark.parametrize(
    ("tables", "expected"),
    [
        ({"server": {"listen": "8080"}}, "server.listen:"),
        ({"server": {"listen": "example.com:80"}}, "server.listen:"),
        ({"server": {"admin_listen": "127.0.0.1:70000"}}, "server.admin_listen:"),
        ({"server": {"listen": "127.0.0.1:-1"}}, "server.listen:"),
        ({"upstream": {"url": "ftp://h/"}}, "upstream.url:"),
        ({"upstream": {"url": "https://u:p@h/"}}, "upstream.url: must not carry credentials"),
        ({"upstream": {"url": "https://h/?a=1"}}, "upstream.url: must not carry a query"),
        ({"upstream": {"url": "/relative"}}, "upstream.url:"),
        ({"upstream": {"timeout_s": 0}}, "upstream.timeout_s:"),
        ({"upstream": {"connect_timeout_s": "5"}}, "upstream.connect_timeout_s:"),
        ({"upstream": {"retries": 9}}, "upstream.retries:"),
        ({"upstream": {"idle_timeout_s": 0}}, "upstream.idle_timeout_s:"),
        ({"upstream": {"forward_proxy_headers": "yes"}}, "upstream.forward_proxy_headers:"),
        ({"signing": {"api_id": "a:b"}}, "signing.api_id:"),
        ({"signing": {"fields": ["api_id", "bodyy"]}}, "signing.fields: 'bodyy': unknown field"),
        ({"signing": {"fields": []}}, "signing.fields:"),
        ({"signing": {"fields": ["body", "body"]}}, "signing.fields: duplicate field(s) body"),
        ({"signing": {"fields": ["body|md4"]}}, "signing.fields: 'body|md4': unknown transform"),
        ({"signing": {"fields": "api_id"}}, "signing.fields: must be a non-empty list"),
        ({"signing": {"separator": 1}}, "signing.separator: must be a string"),
        ({"signing": {"secret_encoding": "hexa"}}, "signing.secret_encoding: 'hexa' must be"),
        ({"signing": {"signature_encoding": "b64"}}, "signing.signature_encoding:"),
        ({"signing": {"timestamp_unit": "us"}}, "signing.timestamp_unit:"),
        ({"signing": {"request_id_format": "int"}}, "signing.request_id_format: 'int' must be"),
        (
            {"signing": {"secret_file": "/x"}},
            "signing: set exactly one of secret_file and secret_env",
        ),
        ({"signing": {"secret_env": "1BAD"}}, "signing.secret_env:"),
        (
            {"client_ip": {"trusted_proxies": ["10.0.0.0/33"]}},
            "client_ip.trusted_proxies: invalid CIDR '10.0.0.0/33'",
        ),
        ({"access": {"allowed_clients": "10.0.0.0/8"}}, "access.allowed_clients:"),
        ({"limits": {"max_body_bytes": -1}}, "limits.max_body_bytes:"),
        ({"limits": {"max_bodybytes": 1}}, "limits.max_bodybytes: unknown key"),
        ({"extra": {"a": 1}}, "[extra]: unknown table"),
        (
            {"server": {"tls_cert_file": "/tls.crt"}},
            "server: set both tls_cert_file and tls_key_file, or neither",
        ),
        ({"server": {"tls_key_file": ""}}, "server.tls_key_file: must be a non-empty path"),
        (
            {"server": {"tls_client_ca_file": "/ca.crt"}},
            "server.tls_client_ca_file: needs server.tls_cert_file and tls_key_file",
        ),
        (
            {"access": {"allowed_client_names": ["frontend"]}},
            "access.allowed_client_names: needs server.tls_client_ca_file",
        ),
        (
            {"upstream": {"proxy_url": "http://u:p@proxy:3128"}},
            "upstream.proxy_url: must not carry credentials: put them in upstream.proxy_auth_file",
        ),
        ({"upstream": {"proxy_url": "https://proxy:3128"}}, "upstream.proxy_url: must be an http"),
        ({"upstream": {"proxy_url": "http://proxy:3128/x"}}, "upstream.proxy_url: must be the"),
        (
            {"upstream": {"proxy_url": "http://proxy:3128", "proxy_from_env": True}},
            "upstream: set proxy_url or proxy_from_env, not both",
        ),
        (
            {"upstream": {"proxy_auth_file": "/p"}},
            "upstream.proxy_auth_file: needs proxy_url or proxy_from_env",
        ),
        (
            {"access": {"allowed_client_names": "frontend"}},
            "access.allowed_client_names: must be a non-empty list",
        ),
    ],
)
def test_each_problem_names_its_key(tables: dict[str, dict[str, object]], expected: str) -> None:
    assert any(p.startswith(expected) for p in problems(merged(**tables))), problems(
        merged(**tables)
    )


def test_tls_settings() -> None:
    server: dict[str, object] = {"tls_cert_file": "/t/tls.crt", "tls_key_file": "/t/tls.key"}
    assert load_mapping(MINIMAL).settings.server.tls is None
    tls = load_mapping(merged(server=server)).settings.server.tls
    assert tls is not None
    assert (tls.files, tls.client_ca_file) == ((Path("/t/tls.crt"), Path("/t/tls.key")), None)
    mtls = load_mapping(
        merged(
            server={**server, "tls_client_ca_file": "/t/ca.crt"},
            access={"allowed_client_names": ["a", "spiffe://x/y"]},
        )
    ).settings
    assert mtls.server.tls is not None
    assert mtls.server.tls.files[2] == Path("/t/ca.crt")
    assert mtls.access.allowed_client_names == frozenset({"a", "spiffe://x/y"})


def test_neither_secret_source_is_a_problem() -> None:
    data = merged()
    del data["signing"]["secret_env"]  # type: ignore[attr-defined]
    assert problems(data) == ["signing: set exactly one of secret_file and secret_env"]


def test_every_bad_field_expression_is_its_own_problem() -> None:
    found = problems(merged(signing={"fields": ["api_id", "bodyy", "body|md4", "header:a b?"]}))
    assert [p.split(":")[0] for p in found] == ["signing.fields"] * 3
    for problem, name in zip(found, ("'bodyy'", "'md4'", "'header:a b?'"), strict=True):
        assert name in problem


def test_the_old_layout_is_a_configuration() -> None:
    old = ["api_id", "request_id", "timestamp", "method", "path_and_query", "content_type", "body"]
    s = load_mapping(merged(signing={"fields": old, "secret_encoding": "utf-8"})).settings
    assert s.signing.scheme == signing.Scheme(fields=tuple(old), secret_encoding="utf-8")


def test_all_problems_are_reported_at_once() -> None:
    data = {
        "server": {"listen": "nope", "colour": "blue"},
        "upstream": {"timeout_s": -1},
        "signing": {"fields": ["x"]},
        "client_ip": {"trusted_proxies": ["bad", "10.0.0.0/8", "worse"]},
    }
    found = problems(data)
    for key in (
        "server.listen:",
        "server.colour: unknown key",
        "upstream.timeout_s:",
        "upstream.url: required",
        "signing.api_id: required",
        "signing.fields:",
        "signing: set exactly one",
        "client_ip.trusted_proxies: invalid CIDR 'bad', 'worse'",
    ):
        assert any(p.startswith(key) for p in found), (key, found)
    assert len(found) == 8


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_file(bad)


def test_readme_config_block_matches_the_sidecar_example() -> None:
    readme = (CONFIG_DIR.parent / "README.md").read_text()
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    load_mapping(tomllib.loads(block))


def test_the_reference_page_is_generated_from_the_declarations() -> None:
    page = (CONFIG_DIR.parent / "docs" / "configuration.md").read_text()
    assert page == reference(), "docs/configuration.md is stale: run scripts/generate-docs"


def test_the_reference_page_lists_every_key_once() -> None:
    page = reference()
    every = [*tables(), ("tenants", TenantSettings)]
    for table, section in every:
        for declared in declared_keys(section, table):
            assert page.count(f"| `{declared.name}` |") >= 1, declared
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    assert len(rows) == sum(len(list(declared_keys(s, t))) for t, s in every)
    assert "## [[tenants]]" in page


def numeric_keys() -> list[tuple[str, str]]:
    """Every key that takes a number, as (table, key)."""
    every = [*tables(), ("tenants", TenantSettings)]
    return [
        (t, d.name) for t, s in every for d in declared_keys(s, t) if d.kind in ("int", "float")
    ]


# How the reference page says a key's range, at the end of its row.
RANGE_TEXT = re.compile(
    r"; (?P<kind>a whole number|a number(?: of [a-z ]+)?) (?P<bounds>from (?P<from>\d+) to "
    r"(?P<to>\d+)|more than (?P<above>\d+) and at most (?P<most>\d+)) \|$"
)
# A burst needs its rate: set beside it, so that the only problem is the range's.
COMPANIONS = {"burst": {"rate_per_s": 1}, "player_burst": {"player_rate_per_s": 1}}


def reference_row(table: str, name: str) -> str:
    heading = "[[tenants]]" if table == "tenants" else f"[{table}]"
    section = reference().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return next(line for line in section.splitlines() if line.startswith(f"| `{name}` |"))


@pytest.mark.parametrize(("table", "name"), numeric_keys(), ids="{0[0]}.{0[1]}".format)
def test_a_range_is_refused_in_the_words_of_the_reference(table: str, name: str) -> None:
    """What the reference page says a key takes is what is accepted, and a refusal says it
    in the same words."""
    said = RANGE_TEXT.search(reference_row(table, name))
    assert said, f"the reference gives no range for {table}.{name}"
    label = "tenants[0]" if table == "tenants" else table

    def refusal(value: object) -> list[str]:
        values = {name: value, **COMPANIONS.get(name, {})}
        data = merged(**({} if table == "tenants" else {table: values}))
        data |= {"tenants": [{**BRAND_B, **values}]} if table == "tenants" else {}
        try:
            load_mapping(data)
        except ConfigError as exc:
            return [p for p in exc.problems if p.startswith(f"{label}.{name}:")]
        return []

    bounds, kind = said["bounds"], said["kind"]
    high = int(said["to"] or said["most"])
    low = int(said["from"] or said["above"])
    below = low - 1 if said["from"] else low
    assert refusal(high) == []
    assert refusal(high + 1) == [f"{label}.{name}: {high + 1} must be {bounds}"]
    assert refusal(below) == [f"{label}.{name}: {below} must be {bounds}"]
    assert refusal(low) == ([] if said["from"] else [f"{label}.{name}: {low} must be {bounds}"])
    assert refusal("1") == [f"{label}.{name}: must be {kind} {bounds}"]
    whole = kind == "a whole number"
    assert refusal((low + high) / 2) == (
        [f"{label}.{name}: must be {kind} {bounds}"] if whole else []
    )


# ---------------------------------------------------------------- [[tenants]]

BRAND_B = {"name": "brand-b", "api_id": "b-id", "secret_env": "B", "hosts": ["b.svc"]}


def test_tenants_take_signings_scheme_unless_they_set_their_own() -> None:
    own = {**BRAND_B, "name": "brand-c", "hosts": ["c.svc"], "signature_encoding": "hex"}
    s = load_mapping(
        merged(signing={"separator": "\n", "timestamp_unit": "ms"}) | {"tenants": [BRAND_B, own]}
    ).settings
    b, c = s.tenants
    assert (b.scheme.separator, b.scheme.timestamp_unit) == ("\n", "ms")
    assert b.scheme.signature_encoding == "base64"
    assert (c.scheme.separator, c.scheme.signature_encoding) == ("\n", "hex")
    assert [t.name for t in s.every_tenant] == ["default", "brand-b", "brand-c"]
    assert s.upstream_of(b) == s.upstream.url
    assert b.hosts == frozenset({"b.svc"})


def test_without_a_default_tenant_signing_needs_no_api_id() -> None:
    data = {"upstream": MINIMAL["upstream"], "tenants": [BRAND_B]}
    s = load_mapping(data).settings
    assert s.default_tenant is None
    assert [t.name for t in s.every_tenant] == ["brand-b"]


def test_a_host_is_matched_without_case_port_or_one_trailing_dot() -> None:
    hosts = ["B.svc:8443", "[::1]:80", "c.svc.", "D.svc.:80"]
    s = load_mapping(merged() | {"tenants": [{**BRAND_B, "hosts": hosts}]}).settings
    assert s.tenants[0].hosts == frozenset({"b.svc", "[::1]", "c.svc", "d.svc"})


@pytest.mark.parametrize("host", ["b.svc..", ".", "b.svc.:80."])
def test_a_host_with_more_than_the_roots_dot_is_refused(host: str) -> None:
    with pytest.raises(ConfigError, match=r"tenants\[0\]\.hosts: not a host name"):
        load_mapping(merged() | {"tenants": [{**BRAND_B, "hosts": [host]}]})


@pytest.mark.parametrize(
    ("tenants", "expected"),
    [
        ([{**BRAND_B, "name": "default"}], "tenants[0].name: 'default' is [signing]'s name"),
        ([{**BRAND_B, "name": "Brand B"}], "tenants[0].name: must be 1 to 63 of a-z"),
        ([BRAND_B, {**BRAND_B, "hosts": ["c.svc"]}], "tenants[1].name: 'brand-b' is also"),
        ([BRAND_B, {**BRAND_B, "name": "brand-c"}], "tenants[1].hosts: 'b.svc' is also"),
        ([{**BRAND_B, "secret_file": "/s"}], "tenants[0]: set exactly one of secret_file"),
        ([{k: v for k, v in BRAND_B.items() if k != "api_id"}], "tenants[0].api_id: required"),
        ([{**BRAND_B, "hosts": None}], "tenants[0].hosts: must be a non-empty list"),
        (
            [{k: v for k, v in BRAND_B.items() if k != "hosts"}],
            "tenants[0]: set listen, hosts or client_names",
        ),
        (
            [{**BRAND_B, "client_names": ["spiffe://b"]}],
            "tenants[0].client_names: needs server.tls_client_ca_file",
        ),
        (
            [{**BRAND_B, "listen": "127.0.0.1:8080"}],
            "tenants[0].listen: '127.0.0.1:8080' is also server.listen's",
        ),
        (
            [
                {**BRAND_B, "listen": "127.0.0.1:8082"},
                {**BRAND_B, "name": "c", "hosts": ["c"], "listen": "127.0.0.1:8082"},
            ],
            "tenants[1].listen: '127.0.0.1:8082' is also tenants[0].listen's",
        ),
        ([{**BRAND_B, "burst": 5}], "tenants[0].burst: needs rate_per_s"),
        ([{**BRAND_B, "rate_per_s": 0}], "tenants[0].rate_per_s: 0 must be more than 0"),
        ([{**BRAND_B, "fields": ["bodyy"]}], "tenants[0].fields: 'bodyy': unknown field"),
        ([{**BRAND_B, "colour": "blue"}], "tenants[0].colour: unknown key"),
        ([{**BRAND_B, "hosts": ["b c"]}], "tenants[0].hosts: not a host name: 'b c'"),
        ({"name": "x"}, "[[tenants]]: must be an array of tables"),
    ],
)
def test_each_tenant_problem_names_its_key(tenants: object, expected: str) -> None:
    found = problems(merged() | {"tenants": tenants})
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.parametrize(
    ("server", "tenant_listens", "expected"),
    [
        (
            {"listen": "127.0.0.1:8080", "admin_listen": "127.0.0.1:8080"},
            [],
            ["server.admin_listen: '127.0.0.1:8080' is also server.listen's"],
        ),
        (
            {"listen": "127.0.0.1:8080"},
            ["0.0.0.0:8080"],
            [
                "tenants[0].listen: '0.0.0.0:8080' overlaps server.listen's '127.0.0.1:8080': "
                "0.0.0.0 takes port 8080 on every IPv4 address"
            ],
        ),
        (
            {"listen": "0.0.0.0:9090", "admin_listen": "localhost:9090"},
            ["127.0.0.1:9090", "[::1]:9090", "[::]:9090"],
            [
                "server.admin_listen: 'localhost:9090' overlaps server.listen's '0.0.0.0:9090': "
                "0.0.0.0 takes port 9090 on every IPv4 address",
                "tenants[0].listen: '127.0.0.1:9090' overlaps server.listen's '0.0.0.0:9090': "
                "0.0.0.0 takes port 9090 on every IPv4 address",
                "tenants[0].listen: '127.0.0.1:9090' is also server.admin_listen's",
                "tenants[2].listen: '[::]:9090' overlaps tenants[1].listen's '[::1]:9090': "
                ":: takes port 9090 on every IPv6 address",
            ],
        ),
        # Port 0 is a fresh port each time; another address or another family is no clash.
        ({"listen": "0.0.0.0:0", "admin_listen": "127.0.0.1:0"}, ["127.0.0.2:8080"], []),
        ({"listen": "0.0.0.0:8080"}, ["[::]:8080", "127.0.0.1:8081"], []),
    ],
)
def test_every_listener_clash_is_a_problem(
    server: dict[str, object], tenant_listens: list[str], expected: list[str]
) -> None:
    data = merged(server=server)
    data["tenants"] = [
        {**BRAND_B, "name": f"t{i}", "hosts": [f"t{i}"], "listen": listen}
        for i, listen in enumerate(tenant_listens)
    ]
    try:
        load_mapping(data)
        found = []
    except ConfigError as exc:
        found = exc.problems
    assert found == expected


def ipv6_loopback() -> bool:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("0.0.0.0", "127.0.0.1"),
        ("127.0.0.1", "0.0.0.0"),
        ("127.0.0.1", "127.0.0.2"),
        ("localhost", "127.0.0.1"),
        ("::", "::1"),
        ("::1", "::"),
        ("0.0.0.0", "::"),
        ("::", "0.0.0.0"),
    ],
)
def test_listeners_overlap_as_the_kernel_says(first: str, second: str) -> None:
    """What check-config calls a clash is what binding the two, as the gateway binds, says."""
    if ":" in first + second and not ipv6_loopback():
        pytest.skip("no IPv6 on this host")
    held = bind(ListenAddress(first, 0))
    try:
        port = held.getsockname()[1]
        try:
            bind(ListenAddress(second, port)).close()
            refused = False
        except ListenError:
            refused = True
    finally:
        held.close()
    assert refused == ListenAddress(first, port).overlaps(ListenAddress(second, port))


def test_more_than_one_worker_needs_fixed_tenant_ports() -> None:
    data = merged(server={"workers": 2, "listen": "127.0.0.1:8080"})
    data["tenants"] = [{**BRAND_B, "listen": "127.0.0.1:0"}]
    assert "tenants[0].listen: more than one worker needs a fixed port" in problems(data)


@pytest.mark.parametrize(
    ("signing_values", "expected"),
    [
        ({"api_id": None}, "signing.api_id: required with a secret_file or secret_env"),
        ({"burst": 3}, "signing.burst: needs rate_per_s"),
    ],
)
def test_signing_as_the_default_tenant(signing_values: dict[str, object], expected: str) -> None:
    data = merged(signing=signing_values) | {"tenants": [BRAND_B]}
    if signing_values.get("api_id", "") is None:
        del data["signing"]["api_id"]  # type: ignore[attr-defined]
    assert expected in problems(data)


def test_player_burst_needs_a_player_rate() -> None:
    assert "limits.player_burst: needs player_rate_per_s" in problems(
        merged(limits={"player_burst": 2})
    )


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        (
            {"store_url": "redis://:hunter2@redis:6379/0"},
            "limits.store_url: must not carry a password",
        ),
        ({"store_url": "redis://u:hunter2@redis"}, "limits.store_url: must not carry a password"),
        ({"store_url": "redis://redis?password=x"}, "limits.store_url: must not carry a password"),
        ({"store_url": "http://redis:6379"}, "limits.store_url: must be a redis://, rediss://"),
        ({"store_url": "redis:///0"}, "limits.store_url: needs a host"),
        ({"store_url": "redis://redis/cache"}, "limits.store_url: the path can only be a database"),
        ({"store_url": "unix://"}, "limits.store_url: needs the socket's path"),
        ({"store_url": "redis://redis:99999"}, "limits.store_url: must be a URL"),
        ({"store_password_file": "/p"}, "limits.store_password_file: needs limits.store_url"),
        ({"store_ca_file": "/ca.pem"}, "limits.store_ca_file: needs limits.store_url"),
        (
            {"store_url": "redis://redis", "store_password_file": "/p", "store_password_env": "P"},
            "limits: set store_password_file or store_password_env, not both",
        ),
        (
            {"store_url": "redis://redis", "store_ca_file": "/ca.pem"},
            "limits.store_ca_file: needs a rediss:// store_url",
        ),
        ({"store_timeout_ms": 0}, "limits.store_timeout_ms: 0 must be from 1 to 10000"),
        ({"store_key_prefix": "a b"}, "limits.store_key_prefix: must be 1 to 64 of"),
        ({"on_store_error": "deny"}, "limits.on_store_error: 'deny' must be one of"),
    ],
)
def test_each_store_problem_names_its_key(limits: dict[str, object], expected: str) -> None:
    found = problems(merged(limits=limits))
    assert any(p.startswith(expected) for p in found), found
    assert not any("hunter2" in p for p in found)  # a password is never echoed


@pytest.mark.parametrize(
    "url", ["redis://redis.cache:6379/0", "rediss://ops@redis.cache", "unix:///run/redis.sock"]
)
def test_a_store_url_without_a_password_is_taken(url: str) -> None:
    limits = load_mapping(merged(limits={"store_url": url})).settings.limits
    assert (str(limits.store_url), limits.store_timeout_ms, limits.on_store_error) == (
        url,
        50,
        "allow",
    )
    assert limits.store_key_prefix == "aleacc-gateway"


def test_the_store_password_variable_is_not_taken_for_a_setting() -> None:
    data = merged(
        limits={"store_url": "redis://redis", "store_password_env": "ALEACC_GATEWAY_REDIS"}
    )
    environ = {"ALEACC_GATEWAY_REDIS": "pw", "TEST_SECRET": "x" * 64}
    assert load_mapping(data, environ).settings.limits.store_password_env == "ALEACC_GATEWAY_REDIS"


# ---------------------------------------------------------------- the environment

ENV_ONLY = {
    "ALEACC_GATEWAY_UPSTREAM_URL": "https://aleacc.example.com/api",
    "ALEACC_GATEWAY_SIGNING_API_ID": "abc",
    "ALEACC_GATEWAY_SIGNING_SECRET_ENV": "S",
}


def test_every_required_key_can_come_from_the_environment() -> None:
    s = load_mapping({}, ENV_ONLY).settings
    assert (str(s.upstream.url), s.signing.api_id, s.signing.secret_env) == (
        "https://aleacc.example.com/api",
        "abc",
        "S",
    )


@pytest.mark.parametrize(
    ("variable", "text", "read"),
    [
        ("ALEACC_GATEWAY_SERVER_WORKERS", "4", lambda s: s.server.workers == 4),
        ("ALEACC_GATEWAY_UPSTREAM_TIMEOUT_S", "2.5", lambda s: s.upstream.timeout_s == 2.5),
        ("ALEACC_GATEWAY_UPSTREAM_FORWARD_PROXY_HEADERS", "TRUE",
         lambda s: s.upstream.forward_proxy_headers is True),
        ("ALEACC_GATEWAY_CLIENT_IP_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.0/8",
         lambda s: [str(n) for n in s.client_ip.trusted_proxies] == ["10.0.0.0/8", "127.0.0.0/8"]),
        ("ALEACC_GATEWAY_ACCESS_ROUTES", '["GET /player/*", "POST /player/signin"]',
         lambda s: [str(r) for r in s.access.routes or ()][1] == "POST /player/signin"),
        ("ALEACC_GATEWAY_SIGNING_FIELDS", "api_id,request_id,timestamp,body",
         lambda s: s.signing.scheme.fields == ("api_id", "request_id", "timestamp", "body")),
        ("ALEACC_GATEWAY_SIGNING_API_ID", "12345678901234567890123456789012",  # digits: a string
         lambda s: s.signing.api_id == "12345678901234567890123456789012"),
    ],
)  # fmt: skip
def test_a_variable_is_read_as_its_key_would_be(variable: str, text: str, read: Any) -> None:
    assert read(load_mapping(MINIMAL, {variable: text}).settings)


def test_the_environment_overrides_the_file_and_says_so() -> None:
    effective = load_mapping(
        merged(server={"workers": 2, "listen": "127.0.0.1:8080"}),
        {"ALEACC_GATEWAY_SERVER_WORKERS": "3"},
    )
    assert effective.settings.server.workers == 3
    assert effective.origins["server.workers"] == "environment ALEACC_GATEWAY_SERVER_WORKERS"
    assert effective.origins["server.listen"] == "file"
    assert "server.drain_delay_s" not in effective.origins  # a default


def test_a_bad_value_names_its_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_mapping(
            MINIMAL,
            {
                "ALEACC_GATEWAY_SERVER_WORKERS": "99",
                "ALEACC_GATEWAY_SERVER_LISTEN": "nope",
                "ALEACC_GATEWAY_ACCESS_ALLOWED_CLIENTS": "[10.0.0.0/8",
            },
        )
    assert info.value.problems == [
        "ALEACC_GATEWAY_ACCESS_ALLOWED_CLIENTS (access.allowed_clients): is not a JSON array",
        "ALEACC_GATEWAY_SERVER_LISTEN (server.listen): 'nope' needs a port from 0 to 65535, "
        "like '127.0.0.1:8080'",
        "ALEACC_GATEWAY_SERVER_WORKERS (server.workers): 99 must be from 1 to 64",
    ]


def test_a_variable_that_names_no_key_is_a_problem() -> None:
    environ = {
        "ALEACC_GATEWAY_SERVER_WORKER": "2",
        "ALEACC_GATEWAY_TENANTS_0_NAME": "b",
        "ALEACC_GATEWAY_COLOUR": "blue",
        "ALEACC_GATEWAY_API_SECRET": "not a setting: signing.secret_env names it",
    }
    data = merged(signing={"secret_env": "ALEACC_GATEWAY_API_SECRET"})
    with pytest.raises(ConfigError) as info:
        load_mapping(data, environ)
    assert info.value.problems == [
        "ALEACC_GATEWAY_COLOUR: no such setting",
        "ALEACC_GATEWAY_SERVER_WORKER: no such setting "
        "(did you mean ALEACC_GATEWAY_SERVER_WORKERS?)",
        "ALEACC_GATEWAY_TENANTS_0_NAME: [[tenants]] are set in the file only",
    ]


def test_a_missing_required_key_names_its_variable() -> None:
    assert "upstream.url: required (or ALEACC_GATEWAY_UPSTREAM_URL)" in problems({})


def test_the_effective_configuration_reads_back_as_the_same_settings() -> None:
    data = merged(access={"routes": ["GET /x"]}, signing={"separator": "\t"}) | {
        "tenants": [{**BRAND_B, "signature_encoding": "hex"}]
    }
    environ = {"ALEACC_GATEWAY_LIMITS_PLAYER_RATE_PER_S": "5"}
    effective = load_mapping(data, environ)
    text = effective_toml(effective)
    assert "player_rate_per_s = 5.0  # environment ALEACC_GATEWAY_LIMITS_PLAYER_RATE_PER_S" in text
    assert 'separator = "\\t"  # file' in text
    assert 'signature_encoding = "hex"  # file' in text
    assert 'timestamp_unit = "s"  # [signing]' in text
    assert "# proxy_url is not set (default)" in text
    assert load_mapping(tomllib.loads(text)).settings == effective.settings
