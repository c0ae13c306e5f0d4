"""`detente libos …`: build, measure and run enclave images.

This module only wires commands; the logic lives in the library modules.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    # Tracebacks must never print local variables: they may hold rows or keys.
    pretty_exceptions_show_locals=False,
    name="libos",
    help="Build, measure and run enclave images (backend 'sim' is a SIMULATION: "
    "no hardware protection).",
    no_args_is_help=True,
)

DirArg = Annotated[Path, typer.Argument(help="instance directory (holds libos.toml)")]


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1)


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
    from protocols.errors import DetenteError

    try:
        config = image.init(dir, signer_key)
    except DetenteError as exc:
        raise _fail(exc) from None
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
    from protocols.errors import DetenteError

    started = time.perf_counter()
    try:
        m = image.build(dir)
        config = InstanceConfig.load(dir)
    except DetenteError as exc:
        raise _fail(exc) from None
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
        try:
            report = launcher.startup_probe(dir)
        except DetenteError as exc:
            raise _fail(exc) from None
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
        typer.echo("SIMULATION backend: no hardware protection")
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
    from protocols.errors import DetenteError

    if target != "gramine":
        typer.echo(f"error: unknown --target {target!r}; the only target is 'gramine'", err=True)
        raise typer.Exit(2)
    try:
        path = gramine.export(dir, out, args or [])
    except DetenteError as exc:
        raise _fail(exc) from None
    typer.echo(f"wrote {path}")
    typer.echo(
        "next, on an SGX machine with Gramine: gramine-manifest, gramine-sgx-sign, gramine-sgx "
        "(the commands are at the top of the file); this machine cannot run it"
    )


@app.command()
def measure(
    dir: DirArg,
    as_json: Annotated[bool, typer.Option("--json", help="stable JSON output")] = False,
) -> None:
    """Print MRENCLAVE/MRSIGNER of the image built in DIR (what `run` starts); warn if stale."""
    from libos import image, launcher
    from libos.sim import SimPlatform
    from protocols.errors import DetenteError

    try:
        m = image.built_measurement(dir)
        root = SimPlatform(launcher.platform_dir(dir)).root_fingerprint if m.simulation else None
    except DetenteError as exc:
        raise _fail(exc) from None
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
    if as_json:
        typer.echo(json.dumps(doc, sort_keys=True))
        return
    typer.echo(f"MRENCLAVE {doc['mrenclave']}")
    typer.echo(f"MRSIGNER  {doc['mrsigner']}")
    typer.echo(f"image     {dir / 'image'} (built, signed manifest)")
    if root is not None:
        typer.echo(f"SIMULATION root CA SHA-256 {root}")
        typer.echo("SIMULATION backend: no hardware protection")


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def run(
    dir: DirArg,
    args: Annotated[
        list[str] | None, typer.Argument(help="arguments passed to the entry point")
    ] = None,
) -> None:
    """Verify DIR's image and run its entry point with ARGS; exit with its exit code."""
    from libos import launcher
    from protocols.errors import DetenteError

    try:
        code = launcher.run(dir, args or [])
    except DetenteError as exc:
        typer.echo(f"error: refusing to run: {exc}", err=True)
        raise typer.Exit(70) from None
    raise typer.Exit(code)


if __name__ == "__main__":
    app()
