"""warmd: a per-user daemon that keeps models warm and serves them over gRPC.

This package must stay light to import: clients import `warmd.v1` (the generated stubs) and
`warmd.errors`, and the daemon answers list/status before torch is ever imported.
"""
__version__ = "0.1.0"
