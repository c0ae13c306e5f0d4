"""Detente: the umbrella `detente` command, the demo and the cluster harness it runs on."""
