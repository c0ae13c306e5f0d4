"""`detente demo` end to end on real processes, with canaries planted in a party's data."""

from __future__ import annotations

import secrets
import struct
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest

from tests.e2e.conftest import LABEL

pytestmark = pytest.mark.e2e


def _plant_canaries(source: Path, target: Path) -> tuple[str, int]:
    """Put a canary string in the id column and a canary number in a feature, in party1's rows."""
    table = pacsv.read_csv(source)
    id_canary = f"CANARY-{secrets.token_hex(8)}"
    number = secrets.randbelow(10**9 - 10**8) + 10**8  # nine digits, fits float64 exactly
    ids = pc.cast(table.column("ID"), pa.string()).to_pylist()
    limits = table.column("LIMIT_BAL").to_pylist()
    education = table.column("EDUCATION").to_pylist()
    # EDUCATION=2 rows go to party1 (the largest group); plant in twenty of them so that
    # some surely land in the training rows rather than the demo's held-out test set.
    rows = [i for i, e in enumerate(education) if e == 2][:20]
    for n, row in enumerate(rows):
        ids[row] = f"{id_canary}-{n}"
        limits[row] = number
    table = table.set_column(0, "ID", pa.array(ids))
    index = table.column_names.index("LIMIT_BAL")
    table = table.set_column(index, "LIMIT_BAL", pa.array(limits, pa.int64()))
    pacsv.write_csv(table, target)
    return id_canary, number


def _encodings(id_canary: str, number: int) -> dict[str, bytes]:
    return {
        "id as UTF-8": id_canary.encode(),
        "id as UTF-16": id_canary.encode("utf-16-le"),
        "number as text": str(number).encode(),
        "number as int64": struct.pack("<q", number),
        "number as int32": struct.pack("<i", number),
        "number as float64": struct.pack("<d", float(number)),
        "number as float32": struct.pack("<f", float(number)),
        "number as big-endian int64": struct.pack(">q", number),
    }


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    ("join", "split", "alone"),
    [
        ("horizontal", ["--split-by", "EDUCATION"], " alone ("),
        ("vertical", [], "'s columns alone ("),
    ],
)
def test_demo_trains_the_plaintext_model_and_leaks_no_canary(
    small_csv: Path, tmp_path: Path, join: str, split: list[str], alone: str
):
    data = tmp_path / "with-canaries.csv"
    id_canary, number = _plant_canaries(small_csv, data)
    workdir = tmp_path / "work"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "detente",
            "demo",
            "--data",
            str(data),
            "--label",
            LABEL,
            "--id",
            "ID",
            "--join",
            join,
            *split,
            "--parties",
            "3",
            "--rounds",
            "20",
            "--workdir",
            str(workdir),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "identical to plaintext: yes" in done.stdout
    assert done.stdout.count(alone) == 3
    assert "joint model from the enclave" in done.stdout
    assert "SIMULATION" in done.stdout + done.stderr
    if join == "vertical":
        # Each party drops some customers: the join keeps only those all three hold.
        uploaded = [int(line.split()[2]) for line in done.stdout.splitlines() if "uploaded" in line]
        joined = int(done.stdout.split("joint model from the enclave (")[1].split()[0])
        assert len(uploaded) == 3 and joined < min(uploaded)

    # The parties really hold the canaries (so the search below can find them)...
    parties = [p for p in _files(workdir) if p.relative_to(workdir).parts[0].startswith("party-")]
    party_files = b"".join(p.read_bytes() for p in parties)
    assert id_canary.encode() in party_files and str(number).encode() in party_files

    # ...and no other role has them, in any encoding.
    untrusted = _files(workdir / "coordinator") + _files(workdir / "enclave-host")
    assert any(p.suffix == ".db" for p in untrusted), "the coordinator's database must be searched"
    assert any("blobs" in p.parts for p in untrusted), "the blob files must be searched"
    assert any(p.name.endswith((".log", ".out")) for p in untrusted), "logs must be searched"
    for path in untrusted:
        content = path.read_bytes()
        for what, pattern in _encodings(id_canary, number).items():
            assert pattern not in content, f"canary ({what}) found in {path}"


def test_demo_sealed_scores_each_partys_held_out_rows_through_the_enclave(
    small_csv: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    done = subprocess.run(
        [
            *[sys.executable, "-m", "detente", "demo", "--data", str(small_csv)],
            *["--label", LABEL, "--id", "ID", "--split-by", "EDUCATION", "--sealed"],
            *["--rounds", "10", "--workdir", str(workdir)],
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "released to nobody" in done.stdout
    assert "identical to plaintext: yes" in done.stdout
    scored = [line for line in done.stdout.splitlines() if "through the enclave: AUC" in line]
    assert len(scored) == 3
    for line in scored:
        rows = int(line.split("scored its ")[1].split()[0].replace(",", ""))
        left = int(line.split("budget left ")[1].split()[0].replace(",", ""))
        assert left == rows  # twice the held-out rows granted, one pass spent
    # Nobody took the model home; each party holds its own predictions, ids written back.
    assert not list(workdir.rglob("model.json")) and not list(workdir.rglob("model.ubj"))
    for n in (1, 2, 3):
        predictions = (workdir / f"party-party{n}" / "held-out.predictions.csv").read_text()
        assert predictions.splitlines()[0].startswith('"ID"') or predictions.startswith("ID")


def test_demo_refuses_a_sealed_vertical_run(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "detente", "demo", "--join", "vertical", "--sealed"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "use --sealed with --join horizontal" in done.stderr
