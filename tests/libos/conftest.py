"""Fixtures for libos tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from libos_testkit import make_instance

from libos import image


@pytest.fixture(scope="session")
def built_probe(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, image.Measurement]:
    instance = make_instance(tmp_path_factory.mktemp("probe") / "instance")
    return instance, image.build(instance)


@pytest.fixture
def probe_copy(built_probe: tuple[Path, image.Measurement], tmp_path: Path) -> Path:
    """A private copy of the built probe instance, safe to tamper with."""
    target = tmp_path / "instance"
    shutil.copytree(built_probe[0], target, ignore=shutil.ignore_patterns("platform"))
    return target
