"""Building an engine: network flags, builder config, timing cache, and the serialized plan."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ...api.request import BuildRequest
from ...core.errors import InputError, VncompileError
from ...core.io import atomic_file, file_lock
from .profile import ShapeProfile, TensorRTOptions
from .script import ONNX
from .toolchain import Toolchain, forwarding_logger, major_version

log = logging.getLogger("vncompile")


def network_flags(trt: ModuleType) -> int:
    """STRONGLY_TYPED on TensorRT 10; 11 networks are always strongly typed and the flag is deprecated."""
    if major_version(trt.__version__) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def parser_failure(parser: Any) -> str:
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    for error in errors:
        log.error("tensorrt parser: %s", error)
    if not errors:
        return f"TensorRT could not parse {ONNX} (see build.log)"
    first = errors[0]
    node = f" at node '{first.node_name()}' ({first.node_operator()})" if first.node_name() else ""
    more = f"; {len(errors) - 1} more in build.log" if len(errors) > 1 else ""
    return f"TensorRT could not parse {ONNX}{node}: {first.desc()}{more}"


def configure(trt: ModuleType, builder: Any, network: Any, config: Any, request: BuildRequest,
              own: TensorRTOptions, profile: ShapeProfile | None) -> None:
    """Workspace limit, TF32 off for fp32, and the --dynamic optimization profile."""
    if own.workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, own.workspace_mb << 20)
    if request.precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    if profile is None:
        return
    optimization = builder.create_optimization_profile()
    name = network.get_input(0).name
    try:
        optimization.set_shape(name, profile.min, profile.opt, profile.max)
    except RuntimeError as exc:
        raise VncompileError(f"TensorRT rejected the optimization profile for '{name}': {exc}") from None
    if config.add_optimization_profile(optimization) < 0:
        raise VncompileError(f"TensorRT rejected the optimization profile {profile.as_dict()} for '{name}'")


def _read_timing_cache(path: Path) -> bytes:
    try:
        return path.read_bytes() if path.exists() else b""
    except OSError as exc:
        raise InputError(f"cannot read the timing cache {path}: {exc.strerror}") from None


def _timing_cache_from(config: Any, blob: bytes) -> Any | None:
    """TensorRT's cache from a serialized one, or None when TensorRT cannot read it."""
    try:
        return config.create_timing_cache(blob)  # None: TensorRT could not read it
    except (RuntimeError, ValueError):  # undocumented either way: treat a raise like None
        return None


def attach_timing_cache(config: Any, path: Path) -> str:
    """Reuse the cache in ``path`` when TensorRT accepts it; replace a corrupt one, or one from another GPU
    or TensorRT version, with a new cache and return a warning (a build never fails on its cache)."""
    blob = _read_timing_cache(path)
    warning = ""
    if blob:
        cache = _timing_cache_from(config, blob)
        # ignore_mismatch False: TensorRT says another device's timings "may lead to functional/performance bugs"
        if cache is not None and config.set_timing_cache(cache, False):
            log.info("tensorrt: reusing the timing cache %s (%d bytes)", path, len(blob))
            return ""
        warning = f"the timing cache {path} was corrupt or from another GPU or TensorRT version; rebuilt it"
        log.warning("tensorrt: %s", warning)
    fresh = config.create_timing_cache(b"")
    if fresh is None or not config.set_timing_cache(fresh, False):
        raise VncompileError("TensorRT could not create a timing cache")
    return warning


def save_timing_cache(config: Any, path: Path) -> None:
    """Write the config's grown cache back, merged with what the file holds by now.

    Builds sharing one --timing-cache (ci --jobs) each attached the file as it was when they began, so a
    plain write would drop the timings the others saved meanwhile: under a lock (``path``.lock), combine
    the file's entries into this cache, then replace the file atomically (attaching needs no lock: it
    never sees half a file), as Polygraphy's save_timing_cache and trtexec do.
    """
    cache = config.get_timing_cache()
    with file_lock(path.with_name(f"{path.name}.lock"), what="TensorRT timing cache lock"):
        blob = _read_timing_cache(path)
        saved = _timing_cache_from(config, blob) if blob else None
        # ignore_mismatch False: another GPU's or version's file is replaced, as attach_timing_cache replaced it
        if saved is not None and not cache.combine(saved, False):
            log.info("tensorrt: the timing cache %s is another GPU's or TensorRT version's; replacing it", path)
        serialized = bytes(cache.serialize())
        with atomic_file(path, force=True, what="TensorRT timing cache") as tmp:
            tmp.write_bytes(serialized)
    log.info("tensorrt: wrote the timing cache %s (%d bytes)", path, len(serialized))


@dataclass(frozen=True)
class BuiltEngine:
    plan: bytes
    hardware_compatibility_level: str  # NONE: this GPU model only
    warning: str  # for the user: a timing cache that had to be rebuilt


def build_engine(toolchain: Toolchain, onnx_path: Path, request: BuildRequest, own: TensorRTOptions,
                 profile: ShapeProfile | None) -> BuiltEngine:
    trt = toolchain.trt
    logger = forwarding_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise VncompileError(parser_failure(parser))
    config = builder.create_builder_config()
    configure(trt, builder, network, config, request, own, profile)
    cache_path = own.timing_cache
    warning = attach_timing_cache(config, Path(cache_path)) if cache_path is not None else ""
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise VncompileError(f"TensorRT could not build the engine: {logger.last_error()}")
    if cache_path is not None:
        save_timing_cache(config, Path(cache_path))
    return BuiltEngine(bytes(plan), config.hardware_compatibility_level.name, warning)
