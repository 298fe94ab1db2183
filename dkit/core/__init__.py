"""The kit's core, shared by every layer above the edge: the kit YAML contract (kit), the run folder (run), label
records (records), the offline model store (store), errors with exit codes (errors), atomic files (files), the
worker-count rule (workers), the version (version).

Imports only the standard library, pyyaml, pydantic and `dkit.edge` (never distill, export or the CLI), so it
works on a base (edge-only) install. import-linter holds it to that (.importlinter).
"""
