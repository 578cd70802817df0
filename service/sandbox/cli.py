"""``longdoc sandbox`` / ``python -m service.sandbox``: run the sandbox model server."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import MISSING, fields

from service.sandbox.app import SandboxConfig, create_sandbox_app


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="longdoc sandbox",
        description="An offline OpenAI-compatible model server that behaves like the configured "
        "model profile on the wire: exact usage, context and rate limits with the real error "
        "bodies, a latency model and fault injection. Answers say model: sandbox.")
    root.add_argument("--host", default="127.0.0.1", help="address to listen on")
    root.add_argument("--port", type=int, default=8001, help="port to listen on")
    for f in fields(SandboxConfig):
        default = f.default if f.default is not MISSING else None
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(default, bool):
            root.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                              default=default, help=f.metadata.get("help"))
        else:
            root.add_argument(flag, dest=f.name, type=type(default), default=default,
                              help=f"{f.metadata.get('help')} (default: %(default)s)")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    args = parser().parse_args(argv)
    config = SandboxConfig(**{f.name: getattr(args, f.name) for f in fields(SandboxConfig)})
    uvicorn.run(create_sandbox_app(config), host=args.host, port=args.port, log_level="warning",
                access_log=False)
    return 0
