"""Serving beyond loopback only on purpose, with a bearer token on every request and Host/Origin checks."""

import anyio
import httpx
import pytest
from test_mcp_support import tiny_server

from mcp_server.cli import exposure, main, parser
from mcp_server.http import http_app

TOKEN = "s3cret-token"
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def test_a_bind_beyond_loopback_without_the_flag_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--http", "--host", "0.0.0.0"])
    assert "--allow-remote" in capsys.readouterr().err


def test_beyond_loopback_a_token_is_generated_and_printed_with_a_warning(capsys, monkeypatch):
    monkeypatch.delenv("LENS_MCP_TOKEN", raising=False)
    p = parser()
    args = p.parse_args(["--http", "--host", "0.0.0.0", "--allow-remote"])
    exposure(p, args)
    err = capsys.readouterr().err
    assert len(args.token) >= 32 and args.token in err and "WARNING" in err, err
    assert args.model_dir == [], "beyond loopback, load_model reads no local paths unless --model-dir names some"


def test_an_app_beyond_loopback_needs_a_token(tmp_path):
    with pytest.raises(ValueError, match="bearer token"):
        http_app(tiny_server(None, tmp_path), "0.0.0.0", 8000, None)


def post_initialize(app, **headers) -> list[int]:
    """Status codes of initialize requests sent to the ASGI app, one per header set, with its lifespan running."""
    async def main():
        codes = []
        with anyio.fail_after(30):
            async with app.app.router.lifespan_context(app.app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://node7:8000") as client:
                    for extra in headers.values():
                        response = await client.post("/mcp", json=INITIALIZE, headers=HEADERS | extra)
                        codes.append(response.status_code)
        return codes
    return anyio.run(main)


def test_every_request_beyond_loopback_needs_the_token_and_a_host_served(tmp_path):
    app = http_app(tiny_server(None, tmp_path), "0.0.0.0", 8000, TOKEN, allowed_hosts=["node7"])
    codes = post_initialize(
        app,
        no_token={"host": "node7:8000"},
        wrong_token={"host": "node7:8000", "authorization": "Bearer guess"},
        rebinding={"host": "evil.example:8000", "authorization": f"Bearer {TOKEN}"},
        foreign_origin={"host": "node7:8000", "origin": "http://evil.example", "authorization": f"Bearer {TOKEN}"},
        good={"host": "node7:8000", "authorization": f"Bearer {TOKEN}"},
    )
    assert codes[:2] == [401, 401], codes
    assert codes[2] == 421 and codes[3] == 403, codes  # the SDK's Host / Origin checks
    assert codes[4] == 200, codes
