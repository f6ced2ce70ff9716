"""The staged pipeline: stages (load, fuse, export) -> prepare (the cached ONNX stages, the float64
reference, accuracy on labelled images) -> target compile -> verify (per output) -> build (cache,
manifest, atomic output); build_process runs builds in a child process for profile and ci."""
