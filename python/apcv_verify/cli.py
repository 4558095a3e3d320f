"""``apcv-verify``: serve, demo, issue."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from . import _native, cli_issue
from .config import ConfigError, load_config
from .logs import configure_logging
from .trust_source import SourceError

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    from .server import serve

    overrides: dict[str, Any] = {
        "server.listen": args.listen,
        "trust.anchors": args.anchor,
        "trust.trust_list": args.trust_list,
        "trust.status_lists": args.status_list,
        "policy.allow_test_identities": True if args.allow_test_identities else None,
    }
    config = load_config(args.config, overrides=overrides)
    serve(config)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(serve=args.serve, listen=args.listen)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apcv-verify", description="Verification service for the open ApCV profile v1."
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning"],
        help="default: info; warning for demo, so its table is not interleaved with logs",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gRPC verification service")
    serve.add_argument("--config", help="TOML configuration file (see docs/operations.md)")
    serve.add_argument("--listen", help="HOST:PORT to listen on (server.listen)")
    serve.add_argument(
        "--anchor",
        action="append",
        help="trust anchor public key, PEM or COSE_Key file; repeatable (trust.anchors)",
    )
    serve.add_argument(
        "--trust-list", help="signed trust list, file or http(s) URL (trust.trust_list)"
    )
    serve.add_argument(
        "--status-list",
        action="append",
        help="signed status list, file or http(s) URL; repeatable (trust.status_lists)",
    )
    serve.add_argument(
        "--allow-test-identities",
        action="store_true",
        help="accept INS test/demonstration OIDs (policy.allow_test_identities); not in production",
    )
    serve.set_defaults(func=_serve)

    demo = commands.add_parser(
        "demo", help="ephemeral demo PKI, server and sample presentations over real gRPC"
    )
    demo.add_argument("--serve", action="store_true", help="keep the demo server running")
    demo.add_argument(
        "--listen", default=None, help="HOST:PORT for --serve (default 127.0.0.1:50051)"
    )
    demo.set_defaults(func=_demo)

    cli_issue.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level or ("warning" if args.command == "demo" else "info"))
    try:
        return int(args.func(args))
    except ConfigError as error:
        print(f"apcv-verify: configuration error: {error}", file=sys.stderr)
        return 2
    except _native.TrustListError as error:
        print(f"apcv-verify: trust list refused: {error}", file=sys.stderr)
        return 1
    except _native.StatusListError as error:
        print(f"apcv-verify: status list refused: {error}", file=sys.stderr)
        return 1
    except SourceError as error:
        print(f"apcv-verify: trust material unreadable: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
