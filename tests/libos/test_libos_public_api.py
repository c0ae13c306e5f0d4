"""libos declares its modules in __all__ and imports none of them when it is imported."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import libos


def test_all_lists_every_public_module() -> None:
    modules = {m.name for m in pkgutil.iter_modules(libos.__path__) if not m.name.startswith("_")}
    assert sorted(libos.__all__) == sorted(modules)


def test_importing_libos_imports_nothing_else() -> None:
    # An enclave imports libos before its verifying import finder is installed.
    code = (
        "import json, sys; before = set(sys.modules); import libos; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == ["libos"]
