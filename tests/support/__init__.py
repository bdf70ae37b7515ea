"""Helpers for the end-to-end tests: hookrelay processes, a capturing target, a TCP proxy and a raw HTTP sender."""
