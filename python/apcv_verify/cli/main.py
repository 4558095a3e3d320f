"""``apcv-verify``: serve, config, demo, issue, scan, corpus."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from .. import _native
from ..config import ConfigError, ServerSection, load_config
from ..observe.logs import configure_logging
from ..trust.sources import SourceError
from . import corpus as cli_corpus
from . import issue as cli_issue
from . import scan as cli_scan

__all__ = ["main"]

log = structlog.get_logger("apcv_verify.cli")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``section.key`` values given as flags (None: not given, the file or env decides)."""
    return {
        "server.listen": args.listen,
        "server.workers": args.workers,
        "trust.anchors": args.anchor,
        "trust.trust_list": args.trust_list,
        "trust.status_lists": args.status_list,
        "policy.allow_test_identities": True if args.allow_test_identities else None,
    }


def grpc_experiments_environment(
    server: ServerSection, environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """The GRPC_EXPERIMENTS entry ``apcv-verify serve`` starts gRPC with:
    ``server.grpc_experiments``, unless ``environ`` already has the variable (then none,
    as when the setting is empty). The benchmark's echo servers get the same entry."""
    value = server.grpc_experiments_variable
    if not value or "GRPC_EXPERIMENTS" in environ:
        return {}
    return {"GRPC_EXPERIMENTS": value}


def give_grpc_experiments(server: ServerSection) -> None:
    """Put :func:`grpc_experiments_environment`'s entry in this process's environment. gRPC
    reads that variable once, when it is first imported: so this runs before anything
    imports grpc (this module does not), and the worker processes inherit it."""
    entry = grpc_experiments_environment(server)
    if not entry:
        return
    if "grpc" in sys.modules:  # a caller that loaded gRPC first (e.g. a test harness)
        log.warning("grpc_experiments_not_applied", reason="grpc was imported before serve")
        return
    os.environ.update(entry)


def _serve(args: argparse.Namespace) -> int:
    config = load_config(args.config, overrides=_overrides(args))
    give_grpc_experiments(config.server)
    from ..service.startup import serve

    if config.server.workers > 1:
        from .workers import serve_workers

        return serve_workers(config)
    serve(config)
    return 0


def _config(args: argparse.Namespace) -> int:
    from .config_print import config_toml

    if args.template:
        from .config_template import config_template

        sys.stdout.write(config_template())
        return 0
    if not args.print:
        print(
            "apcv-verify config: nothing to do: --template prints a commented configuration"
            " file to start from, --print the effective configuration",
            file=sys.stderr,
        )
        return 2
    sys.stdout.write(config_toml(load_config(args.config, overrides=_overrides(args))))
    return 0


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that override configuration keys (shared by ``serve`` and ``config``)."""
    parser.add_argument("--config", help="TOML configuration file (see docs/operations.md)")
    parser.add_argument("--listen", help="HOST:PORT to listen on (server.listen)")
    parser.add_argument(
        "--workers", type=int, help="worker processes sharing the port (server.workers)"
    )
    parser.add_argument(
        "--anchor",
        action="append",
        help="trust anchor public key, PEM or COSE_Key file; repeatable (trust.anchors)",
    )
    parser.add_argument(
        "--trust-list", help="signed trust list, file or http(s) URL (trust.trust_list)"
    )
    parser.add_argument(
        "--status-list",
        action="append",
        help="signed status list, file or http(s) URL; repeatable (trust.status_lists)",
    )
    parser.add_argument(
        "--allow-test-identities",
        action="store_true",
        help="accept INS test/demonstration OIDs (policy.allow_test_identities); not in production",
    )


def _demo(args: argparse.Namespace) -> int:
    # The demo's server runs in this process: its gRPC gets the default server.grpc_experiments
    # (as its event loop gets the default server.event_loop), before the demo loads gRPC.
    give_grpc_experiments(ServerSection())
    from .demo import run_demo

    return run_demo(serve=args.serve, listen=args.listen)


def version_line() -> str:
    """``apcv-verify X.Y.Z``: the version of the installed package (pyproject.toml)."""
    return f"apcv-verify {importlib.metadata.version('apcv-verify')}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apcv-verify", description="Verification service for the open ApCV profile v1."
    )
    parser.add_argument("--version", action="version", version=version_line())
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning"],
        help="default: info; warning for demo, so its table is not interleaved with logs",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gRPC verification service")
    _add_config_flags(serve)
    serve.set_defaults(func=_serve)

    config = commands.add_parser(
        "config", help="show the effective configuration (defaults < file < env < flags)"
    )
    shown = config.add_mutually_exclusive_group()
    shown.add_argument(
        "--print",
        action="store_true",
        help="print it as TOML, secrets masked (TLS key files are never read)",
    )
    shown.add_argument(
        "--template",
        action="store_true",
        help="print a commented configuration file with every key and its default",
    )
    _add_config_flags(config)
    config.set_defaults(func=_config)

    demo = commands.add_parser(
        "demo", help="ephemeral demo PKI, server and sample presentations over real gRPC"
    )
    demo.add_argument("--serve", action="store_true", help="keep the demo server running")
    demo.add_argument(
        "--listen", default=None, help="HOST:PORT for --serve (default 127.0.0.1:50051)"
    )
    demo.set_defaults(func=_demo)

    cli_issue.register(commands)
    cli_scan.register(commands)
    cli_corpus.register(commands)
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
