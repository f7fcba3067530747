"""`lens-mcp` (also `python -m mcp_server`): serve lens over stdio (default) or streamable HTTP.

    lens-mcp                          # stdio, for Claude Code and other MCP clients
    lens-mcp --http --port 8000       # streamable HTTP on http://127.0.0.1:8000/mcp
    lens-mcp --model gemma-3-270m --out ./plots --cache-budget-gb 2
    lens-mcp --http --host 0.0.0.0 --allow-remote --model-dir /data/models   # a cluster node: see README

Logs go to stderr; over stdio, stdout carries the protocol alone. Serving beyond loopback needs
--allow-remote and a bearer token (mcp_server/http.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from pathlib import Path

from mcp_server.http import is_loopback
from mcp_server.state import GiB, Settings, default_out_dir


def parser() -> argparse.ArgumentParser:
    defaults = Settings()
    p = argparse.ArgumentParser(prog="lens-mcp", description="MCP server exposing lens's interpretability tools")
    p.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a --host beyond loopback (every request then needs the bearer token)")
    p.add_argument("--token", default=os.environ.get("LENS_MCP_TOKEN"),
                   help="bearer token HTTP requests must carry (default $LENS_MCP_TOKEN; beyond loopback one is "
                        "generated and printed if not given)")
    p.add_argument("--allowed-host", action="append", default=[],
                   help="another Host name clients use to reach the server (e.g. the node's address); repeatable")
    p.add_argument("--model-dir", action="append", type=Path, default=None,
                   help="load_model reads local paths only inside this folder (repeatable; default beyond "
                        "loopback: no local paths, only aliases and hub ids)")
    p.add_argument("--out", type=Path, default=default_out_dir(),
                   help=f"folder for plots (default {default_out_dir()}; LENS_CACHE moves it)")
    p.add_argument("--model", default=defaults.default_model,
                   help=f"the model calls use before any load_model (default {defaults.default_model})")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--model-budget-gb", type=float, default=defaults.model_budget / GiB,
                   help=f"memory for loaded models' weights (default {defaults.model_budget / GiB:.1f}: half of RAM)")
    p.add_argument("--cache-budget-gb", type=float, default=defaults.cache_budget / GiB,
                   help=f"memory for cached activations (default {defaults.cache_budget / GiB:.1f})")
    p.add_argument("--work-budget-gb", type=float, default=defaults.work_budget / GiB,
                   help=f"memory the running calls may materialise together (default {defaults.work_budget / GiB:.1f})")
    p.add_argument("--busy-timeout", type=float, default=defaults.busy_timeout,
                   help=f"seconds a call waits for a busy model before a 'busy' error (default {defaults.busy_timeout:g})")
    p.add_argument("--hub-timeout", type=float, default=None,
                   help="seconds an HF hub download may take (default $LENS_HUB_TIMEOUT or 600)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def exposure(p: argparse.ArgumentParser, args) -> None:
    """Refuse a bind beyond loopback without --allow-remote; beyond it, warn and make sure of a token."""
    if not args.http or is_loopback(args.host):
        return
    if not args.allow_remote:
        p.error(f"--host {args.host} serves beyond this machine; pass --allow-remote to do it on purpose "
                f"(requests then need a bearer token)")
    if not args.token:
        args.token = secrets.token_urlsafe(32)
        print(f"lens-mcp: generated bearer token (pass it as 'Authorization: Bearer <token>'): {args.token}",
              file=sys.stderr)
    if args.model_dir is None:
        args.model_dir = []
    print(f"lens-mcp: WARNING: serving on {args.host}:{args.port}, beyond this machine. Anyone who can reach it "
          f"and holds the token can run models here; local model paths are confined to "
          f"{[str(d) for d in args.model_dir] or 'none (aliases and hub ids only)'}. Prefer an SSH tunnel to a "
          f"loopback server.", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    exposure(p, args)
    if args.hub_timeout is not None:
        os.environ["LENS_HUB_TIMEOUT"] = str(args.hub_timeout)
    logging.basicConfig(stream=sys.stderr, level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from mcp_server.server import (
        create_server,  # after logging: the SDK configures it only when unset
    )

    settings = Settings(out_dir=args.out, default_model=args.model, device=args.device,
                        model_budget=int(args.model_budget_gb * GiB), cache_budget=int(args.cache_budget_gb * GiB),
                        work_budget=int(args.work_budget_gb * GiB), busy_timeout=args.busy_timeout,
                        model_dirs=args.model_dir)
    server = create_server(settings)
    logging.getLogger("mcp_server").info("lens MCP server: plots in %s, default model %s", settings.out_dir,
                                         settings.default_model)
    if args.http:
        from mcp_server.http import serve
        serve(server, args.host, args.port, args.token, args.allowed_host, args.log_level)
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()
