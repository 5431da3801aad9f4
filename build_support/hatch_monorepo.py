"""Hatchling metadata hook shared by the six distributions of this monorepo.

It fills the two dynamic fields of every package's metadata:

* ``version``: read from the repository's single ``VERSION`` file, so the six
  distributions always carry one version.
* ``dependencies``: the package's third-party requirements plus its sibling
  packages. Inside a checkout, a sibling resolves to its folder
  (``quantkeys @ file:///.../packages/quantkeys``), so
  ``pip install packages/moe-oracle`` works alone. With
  ``QMOE_SIBLING_DEPS=name`` siblings are pinned by name
  (``quantkeys==<version>``): what published wheels carry, and what an editable install of
  several packages in one pip command needs (pip sees a ``file://`` requirement and an
  editable folder as two different candidates).

Per-package configuration lives in the package's ``pyproject.toml``::

    [tool.hatch.metadata.hooks.custom]
    path = "../../build_support/hatch_monorepo.py"
    dependencies = ["torch>=2.4"]
    siblings = ["quantkeys"]
"""

from __future__ import annotations

import os
from pathlib import Path

from hatchling.metadata.plugin.interface import MetadataHookInterface

SIBLINGS_ENV = "QMOE_SIBLING_DEPS"  # "path" (default) or "name"


def _repo_root(package_root: Path) -> Path:
    for candidate in (package_root, *package_root.parents):
        if (candidate / "VERSION").is_file() and (candidate / "packages").is_dir():
            return candidate
    raise RuntimeError(
        f"{package_root} is not inside the monorepo checkout: no VERSION file and packages/ "
        "folder above it"
    )


class MonorepoMetadataHook(MetadataHookInterface):
    PLUGIN_NAME = "custom"

    def update(self, metadata: dict) -> None:
        root = _repo_root(Path(self.root).resolve())
        version = (root / "VERSION").read_text(encoding="utf-8").strip()
        metadata["version"] = version

        mode = os.environ.get(SIBLINGS_ENV, "path").strip().lower()
        if mode not in ("path", "name"):
            raise ValueError(f"{SIBLINGS_ENV}={mode!r}; expected 'path' (default) or 'name'")
        release = mode == "name"
        requirements = list(self.config.get("dependencies", []))
        for sibling in self.config.get("siblings", []):
            folder = root / "packages" / sibling
            if not (folder / "pyproject.toml").is_file():
                raise RuntimeError(f"sibling package {sibling!r} not found at {folder}")
            if release:
                requirements.append(f"{sibling}=={version}")
            else:
                requirements.append(f"{sibling} @ {folder.as_uri()}")
        metadata["dependencies"] = requirements
