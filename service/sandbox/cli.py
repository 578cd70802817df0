"""``longdoc sandbox`` / ``python -m service.sandbox``: run the sandbox model server.

Every flag is a field of ``SandboxConfig`` with its help text, so the flags, ``POST
/sandbox/config`` and docs/sandbox.md name the same options.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import MISSING, fields

from service.sandbox.app import SandboxConfig, create_sandbox_app


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="longdoc sandbox",
        description="An offline OpenAI-compatible model server that plays a model from its own "
        "table: usage counted from the published rules, requests checked as the API checks "
        "them, the API's error bodies and rate-limit headers, a latency model, fault injection "
        "and an oracle that reads pages like a model. Answers say model: sandbox. "
        "See docs/sandbox.md.")
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
                              help=f"{f.metadata.get('help')} (default: %(default)r)")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    cli = parser()
    args = cli.parse_args(argv)
    try:
        config = SandboxConfig(**{f.name: getattr(args, f.name) for f in fields(SandboxConfig)})
        app = create_sandbox_app(config)
    except (ValueError, OSError) as exc:
        cli.error(str(exc))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0
