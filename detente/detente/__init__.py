"""Detente: the umbrella `detente` command."""
