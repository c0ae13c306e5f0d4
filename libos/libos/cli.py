"""`detente libos …`: build, measure and run enclave images.

This module only wires commands; the logic lives in the library modules.
Errors and exit codes follow :mod:`protocols.cli_convention`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from protocols.cli_convention import (
    JsonOption,
    RunRefused,
    command_group,
    emit_json,
    warn_simulation,
)
from protocols.errors import DetenteError

app = command_group(
    "Build, measure and run enclave images (backend 'sim' is a SIMULATION: "
    "no hardware protection).",
    name="libos",
)

DirArg = Annotated[Path, typer.Argument(help="instance directory (holds libos.toml)")]


@app.command()
def init(
    dir: DirArg,
    signer_key: Annotated[
        Path | None,
        typer.Option("--signer-key", help="existing Ed25519 signer key (PEM) instead of a new one"),
    ] = None,
) -> None:
    """Write DIR/libos.toml and a fresh per-instance signer key (mode 0600)."""
    from libos import image

    config = image.init(dir, signer_key)
    typer.echo(f"wrote {dir / 'libos.toml'}")
    typer.echo(f"image signer key: {config.signer_key_path(dir)}")
    typer.echo(f"next: edit it if needed, then run `detente libos build {dir}`")


@app.command()
def build(
    dir: DirArg,
    skip_start_probe: Annotated[
        bool,
        typer.Option(
            "--skip-start-probe",
            help="do not start the enclave to measure its idle memory and start time",
        ),
    ] = False,
) -> None:
    """Copy the sources into DIR/image, measure every file, sign the manifest, print the result."""
    import time

    from libos import image, launcher, limits
    from libos.config import InstanceConfig

    started = time.perf_counter()
    m = image.build(dir)
    config = InstanceConfig.load(dir)
    seconds = time.perf_counter() - started
    typer.echo(f"MRENCLAVE {m.mrenclave}")
    typer.echo(f"MRSIGNER  {m.mrsigner}")
    typer.echo(f"files     {m.file_count} image files")
    typer.echo(
        f"          {m.dependency_file_count} files of {m.dependency_count} distributions, "
        f"{m.dependency_bytes / limits.MIB:,.1f} MiB, each hashed"
    )
    typer.echo(f"built in  {seconds:.2f} s")
    res = config.resources
    budget = limits.Limits.from_resources(res)
    typer.echo(
        f"limits    memory {res.memory_mb} MiB (address space capped at "
        f"{limits.address_space_cap(budget) // limits.MIB} MiB), threads {res.threads}, "
        f"processes {res.processes}"
    )
    if not skip_start_probe and config.backend == "sim":
        report = launcher.startup_probe(dir)
        typer.echo(
            f"idle peak {report.peak_rss_bytes / limits.MIB:,.1f} MiB resident after importing "
            f"{config.entry_module} ({report.modules} modules); started in "
            f"{report.wall_seconds:.2f} s (verification {report.enter_seconds:.2f} s, "
            f"imports {report.import_seconds:.2f} s)"
        )
        headroom = res.memory_mb * limits.MIB - report.peak_rss_bytes
        typer.echo(
            f"          {max(headroom, 0) / limits.MIB:,.1f} MiB of memory_mb left for jobs "
            "(size jobs with libos.limits.estimate_xgboost_bytes)"
        )
    if m.debug:
        typer.echo("DEBUG image: verifiers refuse it unless their policy allows debug")
    if m.simulation:
        warn_simulation()
        typer.echo(f"next: `detente libos run {dir}`")
    else:
        typer.echo(f"next: `detente libos export --target gramine {dir} OUT`")


@app.command()
def export(
    dir: DirArg,
    out: Annotated[Path, typer.Argument(help="directory for the Gramine manifest template")],
    target: Annotated[str, typer.Option("--target", help="what to export for: gramine")] = (
        "gramine"
    ),
    args: Annotated[
        list[str] | None,
        typer.Argument(help="arguments for the entry point, fixed in the manifest (measured)"),
    ] = None,
) -> None:
    """Write a Gramine manifest for DIR's image (trusted files with hashes, encrypted mounts)."""
    from libos import gramine

    if target != "gramine":
        raise typer.BadParameter(
            f"unknown target {target!r}; the only target is 'gramine'", param_hint="'--target'"
        )
    path = gramine.export(dir, out, args or [])
    typer.echo(f"wrote {path}")
    typer.echo(
        "next, on an SGX machine with Gramine: gramine-manifest, gramine-sgx-sign, gramine-sgx "
        "(the commands are at the top of the file); this machine cannot run it"
    )


@app.command()
def measure(dir: DirArg, json_out: JsonOption = False) -> None:
    """Print MRENCLAVE/MRSIGNER of the image built in DIR (what `run` starts); warn if stale."""
    from libos import image, launcher
    from libos.sim import SimPlatform

    m = image.built_measurement(dir)
    root = SimPlatform(launcher.platform_dir(dir)).root_fingerprint if m.simulation else None
    # The sources are measured only to say whether the built image is still theirs.
    try:
        current = image.measure(dir)
    except DetenteError as exc:
        typer.echo(
            f"warning: measured the image built in {dir / 'image'}; the current sources could "
            f"not be measured to compare: {exc}",
            err=True,
        )
    else:
        if (current.mrenclave, current.mrsigner) != (m.mrenclave, m.mrsigner):
            typer.echo(
                f"warning: the sources or libos.toml changed since the image in {dir / 'image'} "
                f"was built (they would give MRENCLAVE {current.mrenclave}, MRSIGNER "
                f"{current.mrsigner}); measured the built image, which is what `detente "
                f"libos run {dir}` starts. Run `detente libos build {dir}` to build and measure "
                "the current sources",
                err=True,
            )
    doc = {
        "mrenclave": m.mrenclave,
        "mrsigner": m.mrsigner,
        "backend": m.backend,
        "simulation_root_sha256": root,
    }
    if json_out:
        emit_json(doc)
    else:
        typer.echo(f"MRENCLAVE {doc['mrenclave']}")
        typer.echo(f"MRSIGNER  {doc['mrsigner']}")
        typer.echo(f"image     {dir / 'image'} (built, signed manifest)")
        if root is not None:
            typer.echo(f"SIMULATION root CA SHA-256 {root}")
    if m.simulation:
        warn_simulation()


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def run(
    dir: DirArg,
    args: Annotated[
        list[str] | None, typer.Argument(help="arguments passed to the entry point")
    ] = None,
) -> None:
    """Verify DIR's image and run its entry point with ARGS; exit with its exit code.

    Exits 70 if it refuses to start the image (see the exit codes below).
    """
    from libos import launcher

    try:
        code = launcher.run(dir, args or [])
    except DetenteError as exc:
        raise RunRefused(f"refusing to run: {exc}") from None
    raise typer.Exit(code)


if __name__ == "__main__":
    app()
