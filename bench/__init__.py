"""Benchmark harness for hookrelay: run it with `scripts/bench` from the repository root.

This folder is not part of the distribution. The wheel ships only `relay_server` and
`relay_client`, so nothing here can be imported by users of hookrelay.
"""
