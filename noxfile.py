# /// script
# dependencies = ["nox>=2025.2.9"]
# ///
"""Sessions: codegen, test (one per platform configuration), build, lint, bench, demo.

`nox -s codegen test` regenerates the generated files and runs every test configuration:

* ``minimal-<package>``: the package installed alone with only its declared dependencies
  (siblings included), running its own tests.
* ``cpu``: everything, torch CPU, no triton: reference backends.
* ``triton-interpret``: + triton with TRITON_INTERPRET=1; tests marked ``triton`` run the real
  kernels on the CPU at small shapes.
* ``xpu-sim``: tests marked ``xpu_sim``: the XPU platform with xpu-experts' emulation.
* ``cuda``: tests marked ``cuda`` or ``triton`` on a real NVIDIA GPU; skips itself without one.
  On a machine without network (the device tool), run ``nox -s "test(cuda)" --no-venv`` with the
  packages already installed into the current interpreter.
* ``interop``: tests marked ``interop`` against real third-party producers.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import nox

nox.needs_version = ">=2025.02.09"
nox.options.default_venv_backend = "virtualenv"
nox.options.sessions = ["codegen", "test"]

ROOT = Path(__file__).resolve().parent
PACKAGES = ("quantkeys", "weight-layouts", "fp8-linear", "moe-oracle", "triton-experts", "xpu-experts")
IMPORT_NAMES = {p: p.replace("-", "_") for p in PACKAGES}
CONSTRAINTS = ("-c", str(ROOT / "ci" / "constraints-cpu.txt"))
TEST_TOOLS = ("pytest>=8", "hypothesis>=6")
ALL_PACKAGE_PATHS = tuple(f"packages/{p}" for p in PACKAGES)

# config -> (pytest marker expression, extra pip requirements, extra environment)
TRANSFORMERS = "transformers>=5,<6"  # moe_oracle.hf and the demo (tests/test_transformers_integration.py)
CONFIGS: dict[str, tuple[str, tuple[str, ...], dict[str, str]]] = {
    "cpu": ("not triton and not xpu_sim and not cuda and not interop", ("jinja2>=3.1", TRANSFORMERS), {}),
    "triton-interpret": ("triton and not cuda_only", ("triton>=3.0", TRANSFORMERS), {"TRITON_INTERPRET": "1"}),
    "xpu-sim": ("xpu_sim", (TRANSFORMERS,), {"QMOE_XPU_EMULATION": "1"}),
    "cuda": ("cuda or triton", (), {}),
    "interop": ("interop", ("compressed-tensors>=0.9", TRANSFORMERS), {}),
}
TEST_PARAMS = [nox.param("minimal", p, id=f"minimal-{p}") for p in PACKAGES] + [
    nox.param(config, None, id=config) for config in CONFIGS
]


def _has_cuda_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None or Path("/dev/nvidia0").exists()


def _installing(session: nox.Session) -> bool:
    return session.venv_backend != "none"


@nox.session
def codegen(session: nox.Session) -> None:
    """Regenerate every generated file from codegen/spec.toml (`-- --check` only diffs)."""
    session.install("jinja2>=3.1")
    session.run("python", "-m", "codegen", *session.posargs)


@nox.session
@nox.parametrize(("config", "package"), TEST_PARAMS)
def test(session: nox.Session, config: str, package: str | None) -> None:
    """Run the tests of one platform configuration (see the module docstring)."""
    if config == "cuda" and not _has_cuda_gpu():
        session.skip("no NVIDIA GPU on this machine; run this configuration through the device tool")
    env = {"QMOE_TEST_CONFIG": config}
    if config == "minimal":
        assert package is not None
        if _installing(session):
            session.install(*TEST_TOOLS, *CONSTRAINTS)
            session.install(f"packages/{package}", *CONSTRAINTS)
        session.run("pytest", f"packages/{package}/tests", *session.posargs, env=env)
        return
    marker, extras, extra_env = CONFIGS[config]
    env.update(extra_env)
    if _installing(session):
        session.install(*TEST_TOOLS, *extras, *CONSTRAINTS)
        session.install(*ALL_PACKAGE_PATHS, *CONSTRAINTS)
    paths = [f"packages/{p}/tests" for p in PACKAGES] + ["tests"]
    # Exit code 5 = no test collected: a configuration whose tests later issues add.
    session.run("pytest", *paths, "-m", marker, *session.posargs, env=env, success_codes=[0, 5])


@nox.session
def build(session: nox.Session) -> None:
    """Build release wheels of the six packages into dist/, then install each alone and import it."""
    session.install("build>=1.0")
    dist = ROOT / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    for package in PACKAGES:
        session.run("python", "-m", "build", "--wheel", "--outdir", str(dist), f"packages/{package}",
                    env={"QMOE_SIBLING_DEPS": "name"})
    wheels = {p: next(dist.glob(f"{IMPORT_NAMES[p]}-*.whl")) for p in PACKAGES}
    for package, wheel in wheels.items():
        with tempfile.TemporaryDirectory(prefix=f"wheel-{package}-") as tmp:
            session.run(sys.executable, "-m", "venv", tmp, external=True)
            python = str(Path(tmp) / "bin" / "python")
            third_party = _third_party_requirements(wheel, wheels)
            if third_party:
                session.run(python, "-m", "pip", "install", "-q", *third_party, *CONSTRAINTS, external=True)
            # Our own wheels come from dist/ only, never from an index.
            session.run(python, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(dist), str(wheel),
                        external=True)
            name = IMPORT_NAMES[package]
            session.run(python, "-c", f"import {name}; print('{package}', {name}.__version__, 'imports alone')",
                        external=True)


def _third_party_requirements(wheel: Path, wheels: dict[str, Path]) -> list[str]:
    """Requires-Dist of ``wheel`` and its sibling wheels that are not siblings (no extras)."""
    found: list[str] = []
    pending, seen = [wheel], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        with zipfile.ZipFile(current) as zf:
            meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
            lines = zf.read(meta).decode().splitlines()
        for line in lines:
            if not line.startswith("Requires-Dist:") or "extra ==" in line:
                continue
            requirement = line.split(":", 1)[1].strip()
            name = requirement.split(";")[0].split("=")[0].split(">")[0].split("<")[0].split("[")[0].strip()
            if name in wheels:
                pending.append(wheels[name])
            elif requirement not in found:
                found.append(requirement)
    return found


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the tree; mypy over quantkeys; the generated files' freshness."""
    session.install("ruff>=0.6", "mypy>=1.10", "jinja2>=3.1")
    session.run("ruff", "check", ".")
    session.run("mypy", "packages/quantkeys/src/quantkeys")
    session.run("python", "-m", "codegen", "--check")


@nox.session(default=False)
def demo(session: nox.Session) -> None:
    """The main job: a tiny transformers Qwen3-MoE quantized into block fp8, GPTQ int4, int8 W8A8,
    MXFP8 and MXFP4 checkpoints, loaded with the backends the oracle picks on this machine (and
    what it would pick elsewhere, with reasons), run, and compared with bf16: a table of accuracy
    and time per forward. ``nox -s demo -- CHECKPOINT`` runs your checkpoint instead."""
    if _installing(session):
        session.install(*ALL_PACKAGE_PATHS, TRANSFORMERS, *CONSTRAINTS)
    session.run("moe-oracle", "demo", *session.posargs, env={"PYTHONUNBUFFERED": "1"})


@nox.session(default=False, venv_backend="none")
def bench(session: nox.Session) -> None:
    """GPU benchmarks (benchmarks/*); run through the device tool, results go to benchmarks/results/."""
    if not _has_cuda_gpu():
        session.skip("benchmarks need an NVIDIA GPU")
    for script in sorted((ROOT / "benchmarks").glob("*/run.py")):
        session.run("python", str(script), *session.posargs, env={"PYTHONUNBUFFERED": "1", **os.environ})
