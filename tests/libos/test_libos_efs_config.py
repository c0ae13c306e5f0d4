"""The [[mounts]] tables of libos.toml: defaults, validation, measurement."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from libos_testkit import write_config

from libos import image
from libos.config import InstanceConfig, Mount, render_default
from protocols.errors import PolicyError


def test_default_config_has_an_mrenclave_data_mount(tmp_path: Path) -> None:
    config = image.init(tmp_path / "i")
    assert config.mounts == (Mount("/data", "data", "mrenclave"),)
    assert config.measured()["mounts"] == [
        {"path": "/data", "host": "data", "key_policy": "mrenclave"}
    ]
    text = (tmp_path / "i" / "libos.toml").read_text()
    assert "[[mounts]]" in text and "mrsigner" in text  # documented in the comments
    assert tomllib.loads(render_default())["mounts"][0]["path"] == "/data"


def test_mounts_are_measured(tmp_path: Path) -> None:
    base = image.init(tmp_path / "i")
    other = InstanceConfig.from_dict(
        {"mounts": [{"path": "/data", "host": "data", "key_policy": "mrsigner"}]}
    )
    assert other.measured() != base.measured()
    no_mounts = InstanceConfig.from_dict({"mounts": []})
    assert no_mounts.mounts == () and no_mounts.measured()["mounts"] == []


def test_key_policy_defaults_to_mrenclave() -> None:
    config = InstanceConfig.from_dict({"mounts": [{"path": "/models", "host": "efs/models"}]})
    assert config.mounts == (Mount("/models", "efs/models", "mrenclave"),)


@pytest.mark.parametrize(
    ("mounts", "quoted"),
    [
        ("/data", "'mounts'"),
        (["/data"], "'mounts[0]'"),
        ([{"path": "data", "host": "d"}], "'mounts[0].path'"),
        ([{"path": "/", "host": "d"}], "'mounts[0].path'"),
        ([{"path": "/a/../b", "host": "d"}], "'mounts[0].path'"),
        ([{"path": "/data", "host": "../outside"}], "'mounts[0].host'"),
        ([{"path": "/data", "host": "/abs"}], "'mounts[0].host'"),
        ([{"path": "/data", "host": "sealed"}], "'mounts[0].host'"),
        ([{"path": "/data", "host": "platform/x"}], "'mounts[0].host'"),
        ([{"path": "/data", "host": "d", "key_policy": "none"}], "'mounts[0].key_policy'"),
        ([{"path": "/data", "host": "d", "size": 3}], "'mounts[0].size'"),
        (
            [{"path": "/data", "host": "a"}, {"path": "/data/sub", "host": "b"}],
            "'mounts[1].path'",
        ),
        ([{"path": "/a", "host": "d"}, {"path": "/b", "host": "d/e"}], "'mounts[1].host'"),
    ],
)
def test_bad_mounts_name_key_and_value(tmp_path: Path, mounts: object, quoted: str) -> None:
    image.init(tmp_path)
    write_config(tmp_path, mounts=mounts)
    with pytest.raises(PolicyError) as info:
        InstanceConfig.load(tmp_path)
    assert quoted in str(info.value)
