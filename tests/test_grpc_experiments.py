"""gRPC's experiments (``server.grpc_experiments``): handed to gRPC as GRPC_EXPERIMENTS by
``apcv-verify serve`` before gRPC is loaded, an operator's own GRPC_EXPERIMENTS kept, and a
name that cannot be one refused by the configuration check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from apcv_verify.cli.main import give_grpc_experiments, grpc_experiments_environment
from apcv_verify.config import ConfigError, ServerSection
from apcv_verify.issuer import DemoPKI
from structlog.testing import capture_logs

from .conftest import ServerProcess, pki_config, start_server, stop_server

#: gRPC's traces name the source file of each line: ``tcp_posix.cc`` is the TCP endpoint of
#: gRPC's own polling, which the server's accepted connections use when EventEngine's
#: listener is off (EventEngine's endpoint logs from ``posix_endpoint.cc``).
OWN_POLLING_ENDPOINT = "tcp_posix.cc"


def serving_line(server: ServerProcess) -> dict[str, object]:
    lines = [json.loads(line) for line in server.logs().splitlines() if '"serving"' in line]
    assert len(lines) == 1
    return lines[0]


def traced_server(pki: DemoPKI, log: Path, env: dict[str, str]) -> ServerProcess:
    """A server whose gRPC traces its TCP endpoints into ``log``; it is called only by the
    health check that waits for it (no scan, so no personal data in the trace)."""
    server = start_server(
        pki.directory,
        log,
        "--allow-test-identities",
        env={"GRPC_TRACE": "tcp", "GRPC_VERBOSITY": "debug", **env},
    )
    stop_server(server)
    return server


def test_the_entry_is_the_setting_unless_the_environment_has_the_variable() -> None:
    server = ServerSection()
    assert grpc_experiments_environment(server, {}) == {
        "GRPC_EXPERIMENTS": "-event_engine_listener"
    }
    # An operator's own value, even an empty one, is kept: no entry to add.
    assert grpc_experiments_environment(server, {"GRPC_EXPERIMENTS": ""}) == {}
    assert grpc_experiments_environment(ServerSection(grpc_experiments=""), {}) == {}


@pytest.mark.slow
def test_serve_starts_grpc_without_eventengine_s_listener(
    pki: DemoPKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GRPC_EXPERIMENTS", raising=False)
    server = traced_server(pki, tmp_path / "default.log", {})
    assert serving_line(server)["grpc_experiments"] == "-event_engine_listener"
    assert OWN_POLLING_ENDPOINT in server.logs()

    # "" leaves gRPC's defaults: the accepted connection is EventEngine's.
    server = traced_server(pki, tmp_path / "none.log", {"APCV_SERVER_GRPC_EXPERIMENTS": ""})
    assert serving_line(server)["grpc_experiments"] == ""
    assert OWN_POLLING_ENDPOINT not in server.logs()


@pytest.mark.slow
def test_an_operator_s_grpc_experiments_is_kept(pki: DemoPKI, tmp_path: Path) -> None:
    server = traced_server(pki, tmp_path / "server.log", {"GRPC_EXPERIMENTS": ""})
    assert serving_line(server)["grpc_experiments"] == ""
    assert OWN_POLLING_ENDPOINT not in server.logs()


def test_the_setting_is_given_before_grpc_is_loaded(tmp_path: Path) -> None:
    """In a fresh interpreter, as ``apcv-verify`` starts: the command's module does not load
    gRPC, so the setting still reaches it; the names are passed without spaces."""
    script = textwrap.dedent(
        """
        import os, sys
        from apcv_verify.cli.main import give_grpc_experiments, grpc_experiments_environment
        from apcv_verify.config import ServerSection
        assert "grpc" not in sys.modules, "the command's module loaded gRPC"
        give_grpc_experiments(ServerSection(grpc_experiments=" -event_engine_listener , b "))
        print(os.environ["GRPC_EXPERIMENTS"])
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.strip() == "-event_engine_listener,b"


def test_the_demo_s_server_gets_the_setting_too(tmp_path: Path) -> None:
    """``apcv-verify demo`` runs its server in its own process: the experiments are given
    before the demo's module loads gRPC (the demo is replaced by a probe here, which reports
    what it finds where the demo would start: gRPC not loaded yet, the variable set)."""
    probe = tmp_path / "apcv_verify_demo_probe.py"
    probe.write_text(
        textwrap.dedent(
            """
            import os, sys
            def run_demo(serve, listen):
                print("grpc" in sys.modules, os.environ.get("GRPC_EXPERIMENTS"))
                return 0
            """
        )
    )
    script = textwrap.dedent(
        """
        import sys
        import apcv_verify_demo_probe
        sys.modules["apcv_verify.cli.demo"] = apcv_verify_demo_probe
        from apcv_verify.cli.main import main
        sys.exit(main(["demo"]))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.split() == ["False", "-event_engine_listener"]


def test_too_late_for_grpc_it_says_so_and_sets_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import grpc  # noqa: F401  (loaded, as in this test process)

    monkeypatch.delenv("GRPC_EXPERIMENTS", raising=False)
    with capture_logs() as logs:
        give_grpc_experiments(ServerSection())
    assert "GRPC_EXPERIMENTS" not in os.environ
    assert [log["event"] for log in logs] == ["grpc_experiments_not_applied"]


def test_the_environment_s_own_value_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_EXPERIMENTS", "-event_engine_client")
    with capture_logs() as logs:
        give_grpc_experiments(ServerSection())
    assert os.environ["GRPC_EXPERIMENTS"] == "-event_engine_client"
    assert logs == []


@pytest.mark.parametrize("value", ["-event_engine_listener", "", "a,-b_2", " -a , b "])
def test_experiment_names_are_accepted(pki: DemoPKI, value: str) -> None:
    assert pki_config(pki, {"server.grpc_experiments": value}).server.grpc_experiments == value


@pytest.mark.parametrize("value", ["event engine", "-", "a;b", "--a", "A", "a,,=1"])
def test_what_cannot_be_an_experiment_name_is_refused(pki: DemoPKI, value: str) -> None:
    with pytest.raises(ConfigError, match=r"server\.grpc_experiments: .* is not an experiment"):
        pki_config(pki, {"server.grpc_experiments": value})
