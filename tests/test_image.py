"""The OCI image built by `make image` (Containerfile), and the wheel its first stage built.

Slow to build, so these tests carry the ``image`` marker: `make test` leaves them out and
`make image-test` (run by .ci/run after `make test`) builds the image and runs them. They
need root and buildah (`buildah run --isolation chroot`); elsewhere they skip with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from apcv_verify.cli.demo import SAMPLES

from .conftest import REPO

pytestmark = pytest.mark.image

#: The oldest glibc the wheel may need (manylinux_2_28: RHEL 8, Debian 10 and later).
MAX_GLIBC = (2, 28)
#: The image's size must stay near what docs/deploy.md "Image" documents (214 MB).
MAX_IMAGE_BYTES = 250 * 1000 * 1000


def image_name() -> str:
    return os.environ.get("APCV_IMAGE", "localhost/apcv-verify:0.1.0")


def unavailable(reason: str) -> None:
    pytest.skip(reason)


@pytest.fixture(scope="module")
def buildah() -> str:
    found = shutil.which("buildah")
    if found is None:
        unavailable("buildah is not installed (`make image-deps` installs it, as root)")
    if os.geteuid() != 0:
        unavailable("buildah --isolation chroot needs root here")
    assert found is not None
    return found


@pytest.fixture(scope="module")
def image(buildah: str) -> dict[str, object]:
    inspected = subprocess.run(
        [buildah, "inspect", "--type", "image", image_name()], capture_output=True, text=True
    )
    if inspected.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"image {image_name()} is missing: `make image-test` builds it")
        unavailable(f"image {image_name()} is not built: run `make image-test`")
    return dict(json.loads(inspected.stdout))


@pytest.fixture
def container(buildah: str, image: dict[str, object]) -> Iterator[str]:
    name = subprocess.run(
        [buildah, "from", "--quiet", image_name()], capture_output=True, text=True, check=True
    ).stdout.strip()
    yield name
    subprocess.run([buildah, "rm", name], capture_output=True, check=False)


def test_the_image_runs_the_demo_with_its_expected_decisions(buildah: str, container: str) -> None:
    started = time.time()
    demo = subprocess.run(
        [buildah, "run", "--isolation", "chroot", container, "--", "apcv-verify", "demo"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    rows = {}
    for sample in SAMPLES:
        # "label  reader  DECISION  REASON  verdict": read the columns the server answered.
        line = next(
            (
                line
                for line in demo.stdout.splitlines()
                if line.startswith(sample.label) and sample.reader_id in line
            ),
            None,
        )
        assert line is not None, f"no row for {sample.label!r}:\n{demo.stdout}"
        decision, reason = line[len(sample.label) :].split()[1:3]
        rows[sample.label] = (decision, reason)
    assert rows == {s.label: (s.expected_decision, s.expected_reason) for s in SAMPLES}
    assert f"All {len(SAMPLES)} decisions as expected" in demo.stdout
    # Read-only root filesystem ready: the run wrote nothing outside /tmp (checked on the
    # container's file tree, which the run shared).
    mount = subprocess.run(
        [buildah, "mount", container], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        written = [
            str(path.relative_to(mount))
            for top in ("opt", "etc", "usr", "var", "home", "root")
            for path in (Path(mount) / top).rglob("*")
            if not path.is_symlink() and path.lstat().st_mtime >= started
        ]
    finally:
        subprocess.run([buildah, "umount", container], capture_output=True, check=False)
    assert written == []


def test_the_image_runs_serve_as_a_non_root_user(image: dict[str, object]) -> None:
    config = image["OCIv1"]["config"]  # type: ignore[index]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["apcv-verify", "serve"]
    assert config["Cmd"] == ["--config", "/etc/apcv-verify/config.toml"]
    assert {"50051/tcp", "50052/tcp", "9464/tcp"} <= set(config["ExposedPorts"])


def test_the_image_has_no_build_tools(buildah: str, container: str) -> None:
    for tool in ("cargo", "rustc", "gcc", "pip", "maturin"):
        found = subprocess.run(
            [buildah, "run", "--isolation", "chroot", container, "--", "sh", "-c",
             f"command -v {tool}"],
            capture_output=True,
            text=True,
        )  # fmt: skip
        assert found.returncode != 0, f"{tool} is in the runtime image: {found.stdout}"


def test_the_image_can_trace(buildah: str, container: str) -> None:
    """The tracing extra is installed, so that the chart's config.tracing.enabled works
    (docs/operations.md "Tracing"): the SDK and both OTLP exporters import."""
    code = (
        "import opentelemetry.sdk.trace, opentelemetry.exporter.otlp.proto.grpc.trace_exporter,"
        " opentelemetry.exporter.otlp.proto.http.trace_exporter"
    )
    done = subprocess.run(
        [buildah, "run", "--isolation", "chroot", container, "--", "python3", "-c", code],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_the_image_core_is_the_profile_guided_build(buildah: str, container: str) -> None:
    """The wheel stage builds the native core from a profile of the service's work
    (Containerfile), as `make dev` does for `make test` and `make bench`: the image ships the
    build the benchmarks measure."""
    code = "import apcv_verify._native as native; print(native.BUILD)"
    done = subprocess.run(
        [buildah, "run", "--isolation", "chroot", container, "--", "python3", "-c", code],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "profile-guided"


def test_the_image_size_is_as_documented(buildah: str, image: dict[str, object]) -> None:
    listed = subprocess.run(
        [buildah, "images", "--json", image_name()], capture_output=True, text=True, check=True
    )
    (entry,) = json.loads(listed.stdout)
    # buildah shows the size in decimal units ("184 MB").
    number, unit = str(entry["size"]).split()
    units = {"B": 1, "kB": 1000, "MB": 1000**2, "GB": 1000**3}
    assert float(number) * units[unit] < MAX_IMAGE_BYTES, entry["size"]


def glibc_versions(binary: bytes, tmp_path: Path) -> set[tuple[int, ...]]:
    path = tmp_path / "native.so"
    path.write_bytes(binary)
    symbols = subprocess.run(
        ["objdump", "-T", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return {tuple(map(int, v.split("."))) for v in re.findall(r"GLIBC_([0-9.]+)", symbols)}


#: The legacy manylinux names (PEP 600) and the glibc they stand for.
LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}


def glibc_of_tag(platform: str) -> tuple[int, int]:
    found = re.fullmatch(r"manylinux_(\d+)_(\d+)_x86_64", platform)
    if found is not None:
        return int(found[1]), int(found[2])
    legacy = platform.removesuffix("_x86_64")
    assert legacy in LEGACY_MANYLINUX, f"not a manylinux tag: {platform}"
    return LEGACY_MANYLINUX[legacy]


def test_the_wheel_installs_on_glibc_2_28_hosts(image: dict[str, object], tmp_path: Path) -> None:
    wheels = sorted((REPO / "dist").glob("apcv_verify-*.whl"))
    assert wheels, "`make image` copies the wheel its first stage built to dist/"
    with zipfile.ZipFile(wheels[-1]) as wheel:
        (info,) = [n for n in wheel.namelist() if n.endswith(".dist-info/WHEEL")]
        tags = [
            line.split(": ", 1)[1]
            for line in wheel.read(info).decode().splitlines()
            if line.startswith("Tag: ")
        ]
        native = wheel.read("apcv_verify/_native.abi3.so")
    platforms = {tag.rsplit("-", 1)[1] for tag in tags}
    assert platforms, tags
    for platform in platforms:
        assert glibc_of_tag(platform) <= MAX_GLIBC, platform
    if shutil.which("objdump") is not None:
        assert max(glibc_versions(native, tmp_path)) <= MAX_GLIBC
