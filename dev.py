#!/usr/bin/env python3
"""Set up a local environment and run the project's everyday commands, with only Python to start.

    python3 dev.py demo    # install into .venv (first time), then run the whole pipeline demo
    python3 dev.py test    # install into .venv (first time), then run the tests (add --slow for all)
    python3 dev.py serve   # the catalogue app on the demo's output (http://127.0.0.1:8000/)
    python3 dev.py bench NAME  # run benchmarks/NAME.py
    python3 dev.py lint    # ruff check + format check

The environment is rebuilt when setup.py changes. Set TFWHALE_VENV to use another folder.
TFWHALE_EXTRAS=hub adds keras-hub backbones (`hub:PRESET`) in a separate folder, .venv-hub: keras-hub needs
the `tensorflow` distribution instead of tensorflow-cpu, and one environment must not hold both.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def _extras() -> tuple[str, str]:
    """(pip extras, default venv folder): cpu,dev,gcs plus TFWHALE_EXTRAS; hub replaces cpu (see setup.py)."""
    wanted = [e.strip() for e in os.environ.get("TFWHALE_EXTRAS", "").split(",") if e.strip()]
    extras = ["cpu", "dev", "gcs", *(e for e in wanted if e not in ("cpu", "dev", "gcs"))]
    if "hub" in extras:
        return ",".join(e for e in extras if e != "cpu"), ".venv-hub"
    return ",".join(extras), ".venv"


EXTRAS, _FOLDER = _extras()
VENV = Path(os.environ.get("TFWHALE_VENV", ROOT / _FOLDER))


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_env() -> Path:
    """Create .venv and install the package with its extras, once per setup.py version."""
    if sys.version_info < (3, 11):  # noqa: UP036 - runs on whatever python3 the user has
        sys.exit(f"tfwhale needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    stamp = VENV / ".tfwhale-installed"
    wanted = hashlib.sha256((ROOT / "setup.py").read_bytes() + EXTRAS.encode()).hexdigest()
    python = venv_python()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"[dev] setting up {VENV} (first run installs TensorFlow; a few minutes)", flush=True)
    if not python.exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[{EXTRAS}]"], check=True)
    stamp.write_text(wanted)
    return python


def run(python: Path, args: list[str]) -> int:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    return subprocess.call([str(python), *args], cwd=ROOT, env=env)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    python = ensure_env()
    if command == "test":
        if "--slow" in rest:
            rest = [a for a in rest if a != "--slow"] + ["-m", ""]
        return run(python, ["-m", "pytest", *rest])
    if command == "demo":
        return run(python, ["-m", "tfwhale.demo", *rest])
    if command == "serve":
        demo = ["--gallery", "demo_out/predict", "--catalogue", "demo_out/catalogue"]
        return run(python, ["-m", "tfwhale.serve", *(rest or demo)])
    if command == "bench":
        if not rest:
            print("usage: python3 dev.py bench NAME [args]; NAME from benchmarks/")
            return 2
        return run(python, [str(ROOT / "benchmarks" / f"{rest[0]}.py"), *rest[1:]])
    if command == "lint":
        code = run(python, ["-m", "ruff", "check", "."])
        return code or run(python, ["-m", "ruff", "format", "--check", "."])
    if command == "setup":
        return 0
    print(f"unknown command {command!r}\n{__doc__}")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
