"""Serving over streamable HTTP: this machine only by default; beyond it, on purpose and with a token.

A server reachable from the network runs models and reads files for whoever can reach it, and a
web page can reach a loopback server through DNS rebinding. So:
- the SDK's Host/Origin checks stay on for every bind address, allowing the names this server is
  reached by (loopback names, the machine's own names, and --allowed-host);
- binding beyond loopback needs --allow-remote, prints a warning, and requires
  `Authorization: Bearer <token>` on every request (the token is generated and printed if not given;
  a token given on loopback is required there too);
- load_model's local paths are confined to --model-dir folders (by default, beyond loopback: none).
"""

from __future__ import annotations

import hmac
import ipaddress
import socket

from mcp.server.transport_security import TransportSecuritySettings

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def served_names(host: str, extra: list[str]) -> list[str]:
    """The Host header values (without port) clients may use to reach this server."""
    names = [*LOOPBACK_NAMES, *extra]
    if not is_loopback(host):
        names += [f"[{host}]" if ":" in host else host, socket.gethostname(), socket.getfqdn()]
        try:
            names += socket.gethostbyname_ex(socket.gethostname())[2]
        except OSError:  # a host name that does not resolve: its addresses come from --allowed-host
            pass
    return list(dict.fromkeys(n for n in names if n and n not in ("0.0.0.0", "[::]")))


def security(host: str, port: int, extra: list[str]) -> TransportSecuritySettings:
    names = served_names(host, extra)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[*names, *(f"{n}:{port}" for n in names)],
        allowed_origins=[f"{scheme}://{n}{suffix}" for n in names for scheme in ("http", "https")
                         for suffix in ("", f":{port}")])


class BearerToken:
    """ASGI middleware: every HTTP request must carry `Authorization: Bearer <token>`, else 401."""

    def __init__(self, app, token: str):
        self.app, self.expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": b"missing or wrong bearer token"})
                return
        await self.app(scope, receive, send)


def http_app(server, host: str, port: int, token: str | None, allowed_hosts: list[str] = ()):
    """The ASGI app serving `server` at /mcp with these checks (what `serve` runs; tests call it directly)."""
    if not is_loopback(host) and not token:
        raise ValueError(f"serving on {host} (beyond loopback) needs a bearer token")
    app = server.streamable_http_app(host=host, transport_security=security(host, port, list(allowed_hosts)))
    return BearerToken(app, token) if token else app


def serve(server, host: str, port: int, token: str | None, allowed_hosts: list[str], log_level: str) -> None:
    import uvicorn

    uvicorn.run(http_app(server, host, port, token, allowed_hosts), host=host, port=port, log_level=log_level.lower())
