"""A diagnostic entry point: prints the enclave's view of itself as JSON.

Set ``entry_point = "libos_test_probes.probe:main"`` (and add
``libos_test_probes`` to ``packages``) in an instance's libos.toml to check an
image end to end. ``--quote HEX`` also prints a quote over that 64-byte
report data (base64); ``--exit N`` returns N; ``--efs-write MOUNT PATH HEX``
and ``--efs-read MOUNT PATH`` write and read a file of an encrypted mount.
"""

from __future__ import annotations

import base64
import json
import sys

import libos
from libos import runtime


def main(argv: list[str]) -> int:
    rt = runtime.current()
    out: dict[str, object] = {
        **rt.measurement.to_json(),
        "simulation": rt.simulation,
        "simulation_root_sha256": rt.root_fingerprint,
        "argv": argv,
        "libos_file": libos.__file__,
        "sealed_dir": str(rt.sealed_dir),
    }
    code = 0
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--quote" and args:
            out["quote"] = base64.b64encode(rt.quote(bytes.fromhex(args.pop(0)))).decode("ascii")
        elif arg == "--exit" and args:
            code = int(args.pop(0))
        elif arg == "--efs-write" and len(args) >= 3:
            # MOUNT PATH HEX: write bytes to a file of an encrypted mount.
            mount, path, data = args.pop(0), args.pop(0), bytes.fromhex(args.pop(0))
            out["efs_written"] = rt.mount(mount).write_bytes(path, data)
        elif arg == "--efs-read" and len(args) >= 2:
            # MOUNT PATH: print a file of an encrypted mount as hex.
            mount, path = args.pop(0), args.pop(0)
            out["efs_read"] = rt.mount(mount).read_bytes(path).hex()
    print(json.dumps(out, sort_keys=True))
    sys.stdout.flush()
    return code
