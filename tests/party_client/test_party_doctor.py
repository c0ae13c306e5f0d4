"""`detente party doctor` without a coordinator: a missing or loose home, and the clock rule."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from party_client.doctor import FAIL, MAX_SKEW_SECONDS, OK, SKIPPED, _Doctor, diagnose
from party_client.home import PartyHome


def test_no_home_fails_config_and_skips_the_rest(tmp_path: Path) -> None:
    found = diagnose(PartyHome(tmp_path / "nowhere"))
    assert not found.ok
    by_name = {c.name: c for c in found.checks}
    assert by_name["config"].status == FAIL
    assert "detente party init" in by_name["config"].fix
    assert all(c.status == SKIPPED for n, c in by_name.items() if n != "config")
    assert found.to_dict()["ok"] is False


def test_a_home_others_can_write_fails(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o777)
    (found,) = [c for c in diagnose(PartyHome(home)).checks if c.name == "config"]
    assert found.status == FAIL and f"chmod go-w {home}" in found.fix


def test_the_clock_rule(tmp_path: Path) -> None:
    doctor = _Doctor(PartyHome(tmp_path), None)
    now = 1_800_000_000_000
    for skew, status in ((0, OK), (MAX_SKEW_SECONDS * 1000, OK), (-61_000, FAIL), (400_000, FAIL)):
        # last_clock: (the coordinator's clock, this machine's), both in ms.
        doctor.remote = SimpleNamespace(last_clock=(now, now + skew))
        check = doctor.clock_check()
        assert check.status == status, (skew, check)
    doctor.remote = SimpleNamespace(last_clock=(now, now + 400_000))
    check = doctor.clock_check()
    assert "400.0 s ahead of the coordinator's" in check.detail and "NTP" in check.fix
    doctor.remote = None
