from __future__ import annotations

from pathlib import Path

import pytest
from libos_testkit import write_config

from libos import image
from libos.config import DEFAULTS, InstanceConfig
from protocols.errors import PolicyError


def test_init_writes_commented_defaults(tmp_path: Path) -> None:
    config = image.init(tmp_path / "i")
    text = (tmp_path / "i" / "libos.toml").read_text()
    assert "# " in text and "SIMULATION" in text and "MEASURED" in text
    assert config.entry_point == DEFAULTS["entry_point"]
    assert list(config.packages) == DEFAULTS["packages"]
    assert list(config.distributions) == DEFAULTS["distributions"]
    assert config.backend == "sim" and config.debug is False
    assert (config.isv_prod_id, config.isv_svn) == (1, 1)
    assert "signer_key" not in config.measured()


def test_init_refuses_existing_instance(tmp_path: Path) -> None:
    image.init(tmp_path)
    with pytest.raises(PolicyError, match="already exists"):
        image.init(tmp_path)


@pytest.mark.parametrize(
    ("settings", "quoted"),
    [
        ({"isv_svn": "two"}, "'isv_svn'"),
        ({"isv_prod_id": 70000}, "70000"),
        ({"debug": "yes"}, "'yes'"),
        ({"backend": "sgx-hw"}, "'sgx-hw'"),
        ({"entry_point": "no_colon"}, "'no_colon'"),
        ({"entry_point": "elsewhere.mod:main"}, "'elsewhere.mod:main'"),
        ({"packages": ["enclave_worker"]}, "'packages'"),
        ({"distributions": ["ok", 3]}, "'distributions'"),
        ({"env_allow": "PATH"}, "'env_allow'"),
        ({"colour": "blue"}, "'colour'"),
        ({"resources": {"memory_mb": 0}}, "'resources.memory_mb'"),
        ({"resources": {"cpus": 2}}, "'resources.cpus'"),
    ],
)
def test_validation_names_key_and_value(
    tmp_path: Path, settings: dict[str, object], quoted: str
) -> None:
    image.init(tmp_path)
    write_config(tmp_path, **settings)
    with pytest.raises(PolicyError) as info:
        InstanceConfig.load(tmp_path)
    assert quoted in str(info.value)
    key = next(iter(settings))
    assert key in str(info.value)


def test_missing_config_names_next_command(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="detente libos init"):
        InstanceConfig.load(tmp_path)


def test_bad_toml(tmp_path: Path) -> None:
    (tmp_path / "libos.toml").write_text("debug = = true\n")
    with pytest.raises(PolicyError, match="not valid TOML"):
        InstanceConfig.load(tmp_path)


def test_env_allow_globs(tmp_path: Path) -> None:
    config = image.init(tmp_path)
    assert config.env_allowed("DETENTE_LOG") and config.env_allowed("LC_ALL")
    assert not config.env_allowed("AWS_SECRET_ACCESS_KEY")
