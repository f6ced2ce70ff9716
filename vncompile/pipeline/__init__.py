"""The staged pipeline: request -> stages (load, fuse, export, simplify, compile) -> verify -> build
(cache, artifacts, manifest) -> profile (workers, analytic memory plan, reports)."""
