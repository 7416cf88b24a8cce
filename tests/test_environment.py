"""Settings from ALEACC_GATEWAY_* variables, through real processes: serve configured
from the environment alone, a misspelt variable, and check-config --show."""

from __future__ import annotations

import tomllib
from pathlib import Path

import aiohttp
from yarl import URL

from gateway.config import load_file, load_mapping
from gateway.mock.upstream import DEMO_API_ID, DEMO_SECRET, journal

from .support import SECRET_ENV, Mock, StartProcess, config_file, run_cli

ENVIRONMENT = {
    "ALEACC_GATEWAY_SERVER_LISTEN": "127.0.0.1:0",
    "ALEACC_GATEWAY_SERVER_ADMIN_LISTEN": "127.0.0.1:0",
    "ALEACC_GATEWAY_SIGNING_API_ID": DEMO_API_ID,
    "ALEACC_GATEWAY_SIGNING_SECRET_ENV": SECRET_ENV,
    SECRET_ENV: DEMO_SECRET.decode(),
}


async def test_serve_runs_from_the_environment_alone(
    mock: Mock, gateway_process: StartProcess
) -> None:
    env = {**ENVIRONMENT, "ALEACC_GATEWAY_UPSTREAM_URL": str(mock.url)}
    gateway = await gateway_process(None, env)
    async with aiohttp.ClientSession() as client, client.get(gateway.proxy / "echo") as r:
        assert r.status == 200
    assert journal(mock.app)[-1].status == 200  # signed with the credential from the environment
    started = gateway.events("started")[0]
    assert started["upstream"] == str(mock.url)


async def test_a_misspelt_variable_stops_serve_with_its_name() -> None:
    env = {
        **ENVIRONMENT,
        "ALEACC_GATEWAY_UPSTREAM_URL": "http://127.0.0.1:9/api",
        "ALEACC_GATEWAY_UPSTREAM_TIMEOUT": "5",
    }
    code, out, err = await run_cli("serve", env=env)
    assert (code, out) == (1, "")
    assert err == (
        "environment: 1 problem(s):\n"
        "  - ALEACC_GATEWAY_UPSTREAM_TIMEOUT: no such setting "
        "(did you mean ALEACC_GATEWAY_UPSTREAM_TIMEOUT_S?)\n"
    )


async def test_check_config_shows_the_configuration_in_force(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(DEMO_SECRET)
    config = config_file(tmp_path / "gw.toml", URL("http://127.0.0.1:9/api"), secret)
    env = {"ALEACC_GATEWAY_UPSTREAM_RETRIES": "3"}
    code, out, err = await run_cli("check-config", "--config", str(config), "--show", env=env)
    assert (code, err) == (0, "")
    assert "retries = 3  # environment ALEACC_GATEWAY_UPSTREAM_RETRIES" in out
    assert f'secret_file = "{secret}"  # file' in out  # where the secret is, never what
    assert DEMO_SECRET.decode() not in out
    assert "timeout_s = 30.0  # default" in out
    # What it prints is a configuration file with the same settings.
    assert load_mapping(tomllib.loads(out)).settings == load_file(config, env).settings


async def test_a_list_nested_too_deeply_is_one_problem_naming_the_variable(
    tmp_path: Path,
) -> None:
    # json (and tomllib) recurse once per level: this depth ran out of stack.
    nested = "[" * 60_000 + "]" * 60_000
    env = {
        **ENVIRONMENT,
        "ALEACC_GATEWAY_UPSTREAM_URL": "http://127.0.0.1:9/api",
        "ALEACC_GATEWAY_ACCESS_ALLOWED_CLIENTS": nested,
    }
    expected = (
        "environment: 1 problem(s):\n"
        "  - ALEACC_GATEWAY_ACCESS_ALLOWED_CLIENTS (access.allowed_clients): "
        "is a JSON array nested too deeply\n"
    )
    for command in ("check-config", "serve"):
        assert await run_cli(command, env=env) == (1, "", expected)
    config = tmp_path / "nested.toml"
    config.write_text(f"[access]\nallowed_clients = {nested}\n")
    code, out, err = await run_cli("check-config", "--config", str(config))
    assert (code, out, err) == (
        1,
        "",
        f"{config}: 1 problem(s):\n  - {config}: invalid TOML: nested too deeply\n",
    )
