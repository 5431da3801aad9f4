"""The distribution installs, imports, and carries the monorepo's single version."""

from pathlib import Path

import xpu_experts

VERSION_FILE = Path(__file__).resolve().parents[3] / "VERSION"


def test_version_is_the_monorepo_version():
    assert xpu_experts.__version__ == VERSION_FILE.read_text().strip()


def test_typed_marker_ships():
    assert (Path(xpu_experts.__file__).parent / "py.typed").is_file()
