"""Diagnostic entry points for test images; test support, never part of a product image.

Test instances (libos_testkit.PROBE) list this package in ``packages`` so the
image measures and ships it; the worker's default image does not.
"""
