"""The worker's public surface: modules declared in __all__, each saying its job."""

from __future__ import annotations

import importlib
import pkgutil

import enclave_worker
from enclave_worker import jobs, models


def test_each_job_and_model_module_says_its_job_in_one_line() -> None:
    for package in (jobs, models):
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            doc = (module.__doc__ or "").strip()
            assert doc and len(doc.splitlines()[0]) <= 100, info.name


def test_the_worker_package_declares_its_modules() -> None:
    modules = {m.name for m in pkgutil.iter_modules(enclave_worker.__path__)}
    assert sorted(enclave_worker.__all__) == sorted(modules)
    assert set(jobs.__all__) <= set(dir(jobs)) and "Progress" not in jobs.__all__
    assert set(models.__all__) <= set(dir(models))
