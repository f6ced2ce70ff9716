"""A strict fake of exactly the TensorRT Python API subset vncompile uses, for TensorRT 10 and 11.

Names, argument names and behaviour follow NVIDIA/TensorRT at tags v10.16 and v11.1 (read, not copied):
- python/src/infer/pyCore.cpp: the bindings, e.g. ``Builder(logger)``, ``create_network(flags=0)``,
  ``set_memory_pool_limit(pool, pool_size)``, ``set_timing_cache(cache, ignore_mismatch)``,
  ``IOptimizationProfile.set_shape(input, min, opt, max)`` (RuntimeError "Shape provided for min is
  inconsistent with other shapes."), ``deserialize_cuda_engine(serialized_engine)``,
  ``create_execution_context(strategy=STATIC)``, ``set_input_shape(name, shape)``,
  ``set_tensor_address(name, memory)``, ``execute_async_v3(stream_handle)`` (a ``size_t``).
- python/docstrings/infer/pyCoreDoc.h: behaviour (create_timing_cache(b"") makes a new cache;
  set_timing_cache returns False on a device mismatch unless ignore_mismatch; a subclassed ILogger
  must call ``trt.ILogger.__init__``).
- python/src/infer/pyFoundationalTypes.cpp: Dims from lists/tuples, IHostMemory with the buffer
  protocol (``bytes(host_memory)``), DataType; python/packaging/bindings_wheel/tensorrt/__init__.py:
  ``nptype``, ``__version__``.
- python/src/parsers/pyOnnx.cpp: ``OnnxParser(network, logger)``, ``parse_from_file(model)`` taking a
  ``std::string`` (a ``pathlib.Path`` is a TypeError), ``num_errors``, ``get_error(index)`` returning
  a ParserError with ``desc()``, ``node_name()``, ``node_operator()``.
- https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Builder.html and
  .../BuilderConfig.html; the 11.0 "Precision Control" page: "Since 11.0, TensorRT supports only
  Strongly Typed networks".
- The parser's rejection of DequantizeLinear on int32 ("only activation types allowed as input to
  this layer"): onnx/onnx-tensorrt#850, microsoft/onnxruntime#14229 and #17738.

What differs by version (diff of pyCoreDoc.h and pyCore.cpp, v10.16 -> v11.1): 11 removed the
BuilderFlags FP16, BF16, INT8, FP8, INT4, FP4, OBEY/PREFER_PRECISION_CONSTRAINTS, WEIGHTLESS and
REJECT_EMPTY_ALGORITHMS, NetworkDefinitionCreationFlag.EXPLICIT_BATCH, IBuilderConfig.int8_calibrator,
ICudaEngine.device_memory_size and Builder.platform_has_fast_fp16; it deprecated (and ignores)
NetworkDefinitionCreationFlag.STRONGLY_TYPED and renumbered the creation flags (include/NvInfer.h).
Within 10: ICudaEngine.device_memory_size_v2 appeared in 10.1, the PREFER_*_PYTHON_PLUGINS creation
flags in 10.9, ICudaEngine.get_engine_stat in 10.14 (whose binding's py::keep_alive on an int result
makes every call raise; 10.15 dropped it).

Where TensorRT fails by logging an error and returning None or False, so does the fake; a wrong
argument type is a TypeError as pybind11 raises it; a missing name is an AttributeError (pybind11
classes take no new attributes, hence ``__slots__``). Creating any TensorRT object with no usable GPU
raises ``FakeCudaCrash``: the real process logs a CUDA error and segfaults at exit.
"""

from __future__ import annotations

import ctypes
import enum
import json
import types
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .cuda_runtime import FakeMachine

FAKE_COMPUTE_MS = 0.75  # what one execute_async_v3 takes on the fake GPU's stream
PLAN_MAGIC, CACHE_MAGIC = b"FAKE-TRT-PLAN\n", b"FAKE-TRT-TIMING-CACHE\n"

BUILDER_FLAGS_10 = ("FP16", "BF16", "INT8", "DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE",
                    "EDITABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS", "SAFETY_SCOPE", "OBEY_PRECISION_CONSTRAINTS",
                    "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO", "REJECT_EMPTY_ALGORITHMS", "VERSION_COMPATIBLE",
                    "EXCLUDE_LEAN_RUNTIME", "FP8", "ERROR_ON_TIMING_CACHE_MISS", "DISABLE_COMPILATION_CACHE",
                    "WEIGHTLESS", "STRIP_PLAN", "REFIT_IDENTICAL", "WEIGHT_STREAMING", "INT4", "REFIT_INDIVIDUAL",
                    "STRICT_NANS", "MONITOR_MEMORY", "FP4", "DISTRIBUTIVE_INDEPENDENCE")
REMOVED_IN_11 = {"FP16", "BF16", "INT8", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
                 "PREFER_PRECISION_CONSTRAINTS", "WEIGHTLESS", "REJECT_EMPTY_ALGORITHMS"}
PRECISION_FLAGS = ("FP16", "BF16", "INT8", "FP8", "INT4", "FP4")  # refused with a strongly typed network
QUANTIZED_ONNX_TYPES = {"INT8", "UINT8", "FLOAT8E4M3FN", "INT4", "FLOAT4E2M1"}


def network_creation_flags(major: int, minor: int) -> dict[str, int]:
    """NetworkDefinitionCreationFlag as include/NvInfer.h numbers it: 11 dropped EXPLICIT_BATCH and renumbered."""
    if major >= 11:
        return {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2}
    plugins = {"PREFER_JIT_PYTHON_PLUGINS": 2, "PREFER_AOT_PYTHON_PLUGINS": 3} if minor >= 9 else {}  # new in 10.9
    return {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1, **plugins}


class FakeCudaCrash(BaseException):  # noqa: N818 - not an Exception: nothing may swallow it
    """What creating a TensorRT object without a usable GPU does to a real process."""


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8


NUMPY_TYPES = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
               DataType.INT32: np.int32, DataType.INT64: np.int64, DataType.BOOL: np.bool_, DataType.UINT8: np.uint8}
ONNX_TO_TRT = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 7: DataType.INT64}


def nptype(trt_type: DataType) -> type:
    if trt_type not in NUMPY_TYPES:
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
    return NUMPY_TYPES[trt_type]


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _expect(function: str, **arguments: tuple[Any, Any]) -> None:
    """pybind11's TypeError when an argument cannot convert to the bound C++ type."""
    for name, (value, kind) in arguments.items():
        ok = _is_int(value) and value >= 0 if kind == "size_t" else (
            _is_int(value) if kind is int else isinstance(value, kind))
        if not ok:
            raise TypeError(f"{function}(): incompatible function arguments: {name}={value!r} "
                            f"({type(value).__name__})")


def _indexed(function: str, items: list[Any], index: int) -> Any:
    """The bindings' get_*(index): None out of range, as the C++ returns nullptr."""
    _expect(function, index=(index, int))
    return items[index] if 0 <= index < len(items) else None


def _dims_arg(function: str, name: str, value: Any) -> tuple[int, ...]:
    """Dims, or a list/tuple of ints (py::implicitly_convertible<std::vector<int64_t>, Dims>)."""
    if isinstance(value, Dims):
        return tuple(value)
    if not isinstance(value, (list, tuple)) or not all(_is_int(v) for v in value):
        raise TypeError(f"{function}(): incompatible function arguments: {name}={value!r}")
    return tuple(int(v) for v in value)


class Dims:
    __slots__ = ("_values",)

    def __init__(self, shape: Any = ()) -> None:
        self._values = tuple(int(v) for v in shape)

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, index: int) -> int:
        return self._values[index]

    def __iter__(self):
        return iter(self._values)

    def __eq__(self, other: object) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, (Dims, tuple, list)) else NotImplemented

    def __repr__(self) -> str:
        return f"({', '.join(map(str, self._values))})"


class IHostMemory:
    """Serialized data; the real class has the buffer protocol, so ``bytes(host_memory)`` copies it."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)

    def __bytes__(self) -> bytes:
        return self._data

    @property
    def nbytes(self) -> int:
        return len(self._data)


def _buffer(function: str, name: str, value: Any) -> bytes:
    """A py::buffer argument: bytes-like or IHostMemory; anything else is a TypeError."""
    if not isinstance(value, (bytes, bytearray, memoryview, IHostMemory)):
        raise TypeError(f"{function}(): incompatible function arguments: {name} must support the buffer protocol")
    return bytes(value)


@dataclass
class Records:
    """What the code under test asked of TensorRT, for the tests' assertions."""

    networks: list[int] = field(default_factory=list)  # create_network flags
    builds: list[dict[str, Any]] = field(default_factory=list)
    deprecated: list[str] = field(default_factory=list)
    timing_hits: int = 0
    timing_misses: int = 0
    runtimes: int = 0
    deserialized: int = 0


class FakeTensorRT:
    """One fake installation: a version, the machine it runs on, and the module it exposes."""

    def __init__(self, version: str, machine: FakeMachine) -> None:
        self.version = version
        self.major, self.minor = (int(p) for p in version.split(".")[:2])
        self.machine = machine
        self.records = Records()
        flags = [f for f in BUILDER_FLAGS_10 if self.major == 10 or f not in REMOVED_IN_11]
        self.BuilderFlag = enum.Enum("BuilderFlag", flags)
        self.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag",
                                                          network_creation_flags(self.major, self.minor))

    @property
    def has_engine_stat(self) -> bool:
        return (self.major, self.minor) >= (10, 14)

    @property
    def has_device_memory_size_v2(self) -> bool:
        return (self.major, self.minor) >= (10, 1)

    def require_gpu(self, what: str) -> None:
        if self.machine.gpu is None:
            raise FakeCudaCrash(f"{what} created without a usable GPU: CUDA initialization failure, then a "
                                "segfault at exit")
        self.machine.trt_objects_created += 1

    def deprecated(self, what: str) -> None:
        self.records.deprecated.append(what)

    def module(self) -> types.ModuleType:
        return _module(self)


# ---------------------------------------------------------------------------- the classes, bound to one FakeTensorRT


def _module(api: FakeTensorRT) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = api.version
    trt.DataType, trt.nptype, trt.Dims, trt.IHostMemory = DataType, nptype, Dims, IHostMemory
    trt.float32, trt.float16, trt.int8, trt.int32, trt.int64 = (DataType.FLOAT, DataType.HALF, DataType.INT8,
                                                                DataType.INT32, DataType.INT64)
    trt.TensorIOMode = enum.Enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM", "DLA_LOCAL_DRAM",
                                                      "DLA_GLOBAL_DRAM", "TACTIC_DRAM", "TACTIC_SHARED_MEMORY"])
    trt.HardwareCompatibilityLevel = enum.Enum("HardwareCompatibilityLevel",
                                               ["NONE", "AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY"])
    trt.ExecutionContextAllocationStrategy = enum.Enum("ExecutionContextAllocationStrategy",
                                                       ["STATIC", "ON_PROFILE_CHANGE", "USER_MANAGED"])
    trt.BuilderFlag, trt.NetworkDefinitionCreationFlag = api.BuilderFlag, api.NetworkDefinitionCreationFlag
    if api.has_engine_stat:
        trt.EngineStat = enum.Enum("EngineStat", ["TOTAL_WEIGHTS_SIZE", "STRIPPED_WEIGHTS_SIZE"])
    bound = {"_api": api, "_trt": trt, "__slots__": ()}
    for cls in (ILogger, Logger, Builder, OnnxParser, Runtime):
        setattr(trt, cls.__name__, type(cls.__name__, (cls,), dict(bound)))
    for cls in (INetworkDefinition, ITensor, IBuilderConfig, IOptimizationProfile, ITimingCache, ParserError,
                ICudaEngine, IExecutionContext):
        setattr(trt, cls.__name__, cls)
    return trt


class _Bound:
    __slots__ = ()
    _api: FakeTensorRT
    _trt: types.ModuleType


class ILogger(_Bound):
    __slots__ = ("_fake_initialized", "__weakref__")
    Severity = Severity
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = Severity  # py::enum_(...).export_values()

    def __init__(self) -> None:
        self._api.require_gpu("ILogger")
        self._fake_initialized = True

    def log(self, severity: Severity, msg: str) -> None:
        raise RuntimeError('Tried to call pure virtual function "ILogger::log"')


class Logger(ILogger):
    __slots__ = ("min_severity",)

    def __init__(self, min_severity: Severity = Severity.WARNING) -> None:
        super().__init__()
        self.min_severity = min_severity

    def log(self, severity: Severity, msg: str) -> None:
        pass


def _logger_arg(function: str, logger: Any) -> Any:
    _expect(function, logger=(logger, ILogger))
    if not getattr(logger, "_fake_initialized", False):
        raise TypeError(f"{type(logger).__name__}.__init__() must be called when overriding __init__")
    return logger


def _emit(logger: Any, severity: Severity, message: str) -> None:
    logger.log(severity, message)


class ITensor:
    __slots__ = ("name", "shape", "dtype", "dim_names")

    def __init__(self, name: str, shape: tuple[int, ...], dtype: DataType, dim_names: list[str | int]) -> None:
        self.name, self.shape, self.dtype, self.dim_names = name, Dims(shape), dtype, dim_names


class INetworkDefinition:
    __slots__ = ("_builder", "_flags", "strongly_typed", "_inputs", "_outputs", "_onnx", "__weakref__")

    def __init__(self, builder: Builder, flags: int, strongly_typed: bool) -> None:
        self._builder, self._flags, self.strongly_typed = builder, flags, strongly_typed
        self._inputs: list[ITensor] = []
        self._outputs: list[ITensor] = []
        self._onnx: bytes = b""

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_input(self, index: int) -> ITensor | None:
        return _indexed("get_input", self._inputs, index)

    def get_output(self, index: int) -> ITensor | None:
        return _indexed("get_output", self._outputs, index)

    def get_flag(self, flag: Any) -> bool:
        return bool(self._flags & (1 << int(flag))) or (flag.name == "STRONGLY_TYPED" and self.strongly_typed)


class Builder(_Bound):
    __slots__ = ("_logger",)

    def __init__(self, logger: ILogger) -> None:
        self._logger = _logger_arg("Builder.__init__", logger)
        self._api.require_gpu("Builder")

    def __getattr__(self, name: str) -> Any:
        if name in ("platform_has_fast_fp16", "platform_has_fast_int8", "platform_has_tf32") and self._api.major == 10:
            self._api.deprecated(f"Builder.{name}")
            return True
        raise AttributeError(f"'tensorrt.Builder' object has no attribute '{name}'")

    def create_network(self, flags: int = 0) -> INetworkDefinition | None:
        _expect("create_network", flags=(flags, "size_t"))
        api, known = self._api, 0
        for flag in api.NetworkDefinitionCreationFlag:
            known |= 1 << int(flag)
        if flags & ~known:
            _emit(self._logger, Severity.ERROR, f"createNetworkV2: invalid NetworkDefinitionCreationFlags {flags}")
            return None
        typed_bit = 1 << int(api.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        if api.major >= 11 and flags & typed_bit:
            api.deprecated("NetworkDefinitionCreationFlag.STRONGLY_TYPED (always on in 11, ignored)")
        if api.major == 10 and flags & (1 << int(api.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)):
            api.deprecated("NetworkDefinitionCreationFlag.EXPLICIT_BATCH (ignored since 10.0)")
        api.records.networks.append(flags)
        return INetworkDefinition(self, flags, api.major >= 11 or bool(flags & typed_bit))

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig(self)

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        _expect("build_serialized_network", network=(network, INetworkDefinition), config=(config, IBuilderConfig))
        failure = self._check_build(network, config)
        if failure:
            _emit(self._logger, Severity.ERROR, failure)
            return None
        self._use_timing_cache(network, config)
        header = _plan_header(self._api, network, config)
        self._api.records.builds.append({**header, "network_flags": network._flags})
        _emit(self._logger, Severity.INFO, f"fake engine built for {header['gpu']}")
        return IHostMemory(PLAN_MAGIC + json.dumps(header).encode() + b"\n" + network._onnx)

    def _check_build(self, network: INetworkDefinition, config: IBuilderConfig) -> str:
        if network._builder is not self or config._builder is not self:
            return "the network and config must come from this builder"
        if not network._inputs:
            return "Network must have at least one input (was the ONNX parsed?)"
        if network.strongly_typed:
            flags = [f for f in PRECISION_FLAGS if f in config._flags]
            if flags:
                return f"BuilderFlag {', '.join(flags)} is not allowed with a strongly typed network"
        dynamic = [t for t in network._inputs if -1 in tuple(t.shape)]
        names = {t.name for t in network._inputs}
        for profile in config._profiles:
            unknown = set(profile._shapes) - names
            if unknown:
                return f"optimization profile names inputs the network lacks: {sorted(unknown)}"
        if dynamic and not config._profiles:
            return "Network has dynamic or shape inputs, but no optimization profile has been defined."
        for tensor in dynamic:
            for profile in config._profiles:
                shapes = profile._shapes.get(tensor.name)
                if shapes is None:
                    return f"optimization profile is missing values for input {tensor.name}"
                static = tuple(tensor.shape)
                if any(len(s) != len(static) or any(d not in (-1, v) for d, v in zip(static, s, strict=True))
                       for s in shapes):
                    return f"optimization profile for {tensor.name} does not match its static dimensions"
        return ""

    def _use_timing_cache(self, network: INetworkDefinition, config: IBuilderConfig) -> None:
        cache = config._timing_cache
        if cache is None:
            return
        import onnx

        model = onnx.load_from_string(network._onnx)
        keys = {f"{node.op_type}:{'/'.join(node.input[1:])}" for node in model.graph.node}
        self._api.records.timing_hits += len(keys & cache._entries)
        self._api.records.timing_misses += len(keys - cache._entries)
        cache._entries |= keys


def _plan_header(api: FakeTensorRT, network: INetworkDefinition, config: IBuilderConfig) -> dict[str, Any]:
    import onnx
    from onnx import numpy_helper

    gpu = api.machine.gpu
    assert gpu is not None
    model = onnx.load_from_string(network._onnx)
    weights = sum(numpy_helper.to_array(i).nbytes for i in model.graph.initializer)
    largest = max((int(np.prod(s)) for p in config._profiles for shapes in p._shapes.values() for s in shapes),
                  default=max(int(np.prod(tuple(t.shape))) for t in network._inputs))
    return {
        "version": api.version, "gpu": gpu.name, "capability": list(gpu.capability),
        "hardware_compatibility_level": config._hardware_level.name, "strongly_typed": network.strongly_typed,
        "flags": sorted(config._flags), "pools": {p.name: size for p, size in config._pools.items()},
        "profiles": [{name: [list(s) for s in shapes] for name, shapes in p._shapes.items()}
                     for p in config._profiles],
        "timing_cache": config._timing_cache is not None,
        "inputs": [[t.name, t.dtype.name, list(t.shape), t.dim_names] for t in network._inputs],
        "outputs": [[t.name, t.dtype.name, list(t.shape), t.dim_names] for t in network._outputs],
        "weights": weights, "activations": largest * 4 * 16,
    }


class ParserError:
    __slots__ = ("_desc", "_node_name", "_operator")

    def __init__(self, desc: str, node_name: str = "", operator: str = "") -> None:
        self._desc, self._node_name, self._operator = desc, node_name, operator

    def code(self) -> int:
        return 6  # ErrorCode.kINVALID_NODE

    def desc(self) -> str:
        return self._desc

    def node_name(self) -> str:
        return self._node_name

    def node_operator(self) -> str:
        return self._operator

    def __str__(self) -> str:
        return f"In node ({self._node_name}) [{self._operator}]: {self._desc}"


class OnnxParser(_Bound):
    __slots__ = ("_network", "_logger", "_errors")

    def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
        _expect("OnnxParser.__init__", network=(network, INetworkDefinition))
        self._network, self._logger = network, _logger_arg("OnnxParser.__init__", logger)
        self._errors: list[ParserError] = []
        self._api.require_gpu("OnnxParser")

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> ParserError | None:
        return _indexed("get_error", self._errors, index)

    def clear_errors(self) -> None:
        self._errors.clear()

    def parse_from_file(self, model: str) -> bool:
        _expect("parse_from_file", model=(model, str))  # std::string: a pathlib.Path does not convert
        try:
            with open(model, "rb") as f:
                return self._parse(f.read())
        except OSError as exc:
            self._errors.append(ParserError(f"Failed to open file: {exc.strerror}"))
            return False

    def parse(self, model: Any, path: str | None = None) -> bool:
        return self._parse(_buffer("parse", "model", model))

    def _parse(self, data: bytes) -> bool:
        import onnx

        try:
            model = onnx.load_from_string(data)
        except Exception as exc:  # noqa: BLE001 - the real parser reports any protobuf failure as an error
            self._errors.append(ParserError(f"Failed to parse ONNX model: {exc}"))
            return False
        constants = {i.name: onnx.TensorProto.DataType.Name(i.data_type) for i in model.graph.initializer}
        for node in model.graph.node:
            source = constants.get(node.input[0]) if node.input else None
            if node.op_type == "DequantizeLinear" and source is not None and source not in QUANTIZED_ONNX_TYPES:
                self._errors.append(ParserError(f"{node.name}: only activation types allowed as input to this layer.",
                                                node.name, node.op_type))
        if self._errors:
            for error in self._errors:
                _emit(self._logger, Severity.ERROR, str(error))
            return False
        network = self._network
        network._inputs = [_tensor(v) for v in model.graph.input if v.name not in constants]
        network._outputs = [_tensor(v) for v in model.graph.output]
        network._onnx = data
        return True


def _tensor(value: Any) -> ITensor:
    dims = value.type.tensor_type.shape.dim
    names: list[str | int] = [d.dim_param if d.dim_param else d.dim_value for d in dims]
    shape = tuple(-1 if isinstance(n, str) else n for n in names)
    return ITensor(value.name, shape, ONNX_TO_TRT[value.type.tensor_type.elem_type], names)


class IOptimizationProfile:
    __slots__ = ("_shapes",)

    def __init__(self) -> None:
        self._shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - the bound names
        _expect("set_shape", input=(input, str))
        shapes = tuple(_dims_arg("set_shape", n, v) for n, v in (("min", min), ("opt", opt), ("max", max)))
        for label, low, high in (("min", shapes[0], shapes[1]), ("opt", shapes[1], shapes[2])):
            if len(low) != len(high) or any(a > b or a < 0 for a, b in zip(low, high, strict=True)):
                raise RuntimeError(f"Shape provided for {label} is inconsistent with other shapes.")
        self._shapes[input] = shapes

    def get_shape(self, input: str) -> list[Dims]:  # noqa: A002
        return [Dims(s) for s in self._shapes[input]]

    def __bool__(self) -> bool:  # the real profile is valid once its inputs have consistent shapes
        return bool(self._shapes)


class ITimingCache:
    __slots__ = ("_version", "_gpu", "_entries")

    def __init__(self, version: str, gpu: list[Any], entries: set[str]) -> None:
        self._version, self._gpu, self._entries = version, gpu, entries

    def serialize(self) -> IHostMemory:
        body = {"version": self._version, "gpu": self._gpu, "entries": sorted(self._entries)}
        return IHostMemory(CACHE_MAGIC + json.dumps(body).encode())

    def combine(self, input_cache: ITimingCache, ignore_mismatch: bool) -> bool:
        _expect("combine", input_cache=(input_cache, ITimingCache), ignore_mismatch=(ignore_mismatch, bool))
        if input_cache._version != self._version or (input_cache._gpu != self._gpu and not ignore_mismatch):
            return False
        self._entries |= input_cache._entries
        return True

    def reset(self) -> bool:
        self._entries.clear()
        return True


class IBuilderConfig:
    __slots__ = ("_builder", "_flags", "_pools", "_profiles", "_timing_cache", "_hardware_level")

    def __init__(self, builder: Builder) -> None:
        self._builder = builder
        self._flags = {"TF32"}  # the documented default: TF32 enabled
        self._pools: dict[Any, int] = {}
        self._profiles: list[IOptimizationProfile] = []
        self._timing_cache: ITimingCache | None = None
        self._hardware_level = builder._trt.HardwareCompatibilityLevel.NONE

    @property
    def _api(self) -> FakeTensorRT:
        return self._builder._api

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"'tensorrt.IBuilderConfig' object has no attribute '{name}'")

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "int8_calibrator" and self._api.major == 10:
            self._api.deprecated("IBuilderConfig.int8_calibrator (superseded by explicit quantization)")
            return
        if name == "hardware_compatibility_level":
            _expect("hardware_compatibility_level", value=(value, self._builder._trt.HardwareCompatibilityLevel))
            name = "_hardware_level"
        object.__setattr__(self, name, value)  # __slots__ refuse any other name, as pybind11 does

    @property
    def hardware_compatibility_level(self) -> Any:
        return self._hardware_level

    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
        _expect("set_memory_pool_limit", pool=(pool, self._builder._trt.MemoryPoolType),
                pool_size=(pool_size, "size_t"))
        self._pools[pool] = int(pool_size)

    def get_memory_pool_limit(self, pool: Any) -> int:
        _expect("get_memory_pool_limit", pool=(pool, self._builder._trt.MemoryPoolType))
        return self._pools.get(pool, self._api.machine.gpus[0].memory)

    def _flag(self, function: str, flag: Any) -> str:
        _expect(function, flag=(flag, self._api.BuilderFlag))
        if flag.name in PRECISION_FLAGS and self._api.major == 10 and self._api.minor >= 12:
            self._api.deprecated(f"BuilderFlag.{flag.name} (deprecated in 10.12: superseded by strong typing)")
        return flag.name

    def set_flag(self, flag: Any) -> None:
        self._flags.add(self._flag("set_flag", flag))

    def clear_flag(self, flag: Any) -> None:
        self._flags.discard(self._flag("clear_flag", flag))

    def get_flag(self, flag: Any) -> bool:
        return self._flag("get_flag", flag) in self._flags

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        _expect("add_optimization_profile", profile=(profile, IOptimizationProfile))
        if not profile:
            return -1
        self._profiles.append(profile)
        return len(self._profiles) - 1

    @property
    def num_optimization_profiles(self) -> int:
        return len(self._profiles)

    def create_timing_cache(self, serialized_timing_cache: Any) -> ITimingCache | None:
        blob = _buffer("create_timing_cache", "serialized_timing_cache", serialized_timing_cache)
        if not blob:
            gpu = self._api.machine.gpu
            assert gpu is not None
            return ITimingCache(self._api.version, [gpu.name, list(gpu.capability)], set())
        try:
            if not blob.startswith(CACHE_MAGIC):
                raise ValueError("bad magic")
            body = json.loads(blob[len(CACHE_MAGIC):])
            return ITimingCache(body["version"], body["gpu"], set(body["entries"]))
        except (ValueError, KeyError):
            _emit(self._builder._logger, Severity.ERROR, "Failed to deserialize the timing cache: corrupt data")
            return None

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        _expect("set_timing_cache", cache=(cache, ITimingCache), ignore_mismatch=(ignore_mismatch, bool))
        gpu = self._api.machine.gpu
        assert gpu is not None
        if cache._version != self._api.version:
            _emit(self._builder._logger, Severity.ERROR, "The timing cache was created by another TensorRT version")
            return False
        if cache._gpu != [gpu.name, list(gpu.capability)] and not ignore_mismatch:
            _emit(self._builder._logger, Severity.ERROR, "The timing cache's CUDA device property mismatches")
            return False
        self._timing_cache = cache  # py::keep_alive<1, 2>: the config keeps the cache alive
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self._timing_cache


class Runtime(_Bound):
    __slots__ = ("_logger",)

    def __init__(self, logger: ILogger) -> None:
        self._logger = _logger_arg("Runtime.__init__", logger)
        self._api.require_gpu("Runtime")
        self._api.records.runtimes += 1

    def deserialize_cuda_engine(self, serialized_engine: Any) -> ICudaEngine | None:
        blob = _buffer("deserialize_cuda_engine", "serialized_engine", serialized_engine)
        api, gpu = self._api, self._api.machine.gpu
        assert gpu is not None
        if not blob.startswith(PLAN_MAGIC):
            _emit(self._logger, Severity.ERROR, "IRuntime::deserializeCudaEngine: not a serialized engine")
            return None
        header_text, _, onnx_bytes = blob[len(PLAN_MAGIC):].partition(b"\n")
        header = json.loads(header_text)
        if header["version"] != api.version:
            _emit(self._logger, Severity.ERROR, f"The engine plan file is not compatible with this version of "
                                                f"TensorRT, expecting library version {api.version} got "
                                                f"{header['version']}")
            return None
        if [gpu.name, list(gpu.capability)] != [header["gpu"], header["capability"]]:
            _emit(self._logger, Severity.ERROR, "The engine plan file is generated on an incompatible device")
            return None
        api.records.deserialized += 1
        return ICudaEngine(self, header, onnx_bytes)


class ICudaEngine:
    __slots__ = ("_runtime", "_header", "_onnx", "_tensors", "_session", "__weakref__")

    def __init__(self, runtime: Runtime, header: dict[str, Any], onnx_bytes: bytes) -> None:
        self._runtime, self._header, self._onnx, self._session = runtime, header, onnx_bytes, None
        self._tensors = {name: (mode, DataType[dtype], shape, dims) for mode, group in (("INPUT", header["inputs"]),
                         ("OUTPUT", header["outputs"])) for name, dtype, shape, dims in group}
        machine = runtime._api.machine
        machine.reserved[id(self)] = header["weights"]  # the engine's weights live on the device
        weakref.finalize(self, machine.reserved.pop, id(self), None)

    @property
    def _api(self) -> FakeTensorRT:
        return self._runtime._api

    def __getattr__(self, name: str) -> Any:
        api = self._api
        if name == "device_memory_size" and api.major == 10:
            if api.has_device_memory_size_v2:
                api.deprecated("ICudaEngine.device_memory_size (deprecated in 10.1: device_memory_size_v2)")
            return self._header["activations"]
        if name == "device_memory_size_v2" and api.has_device_memory_size_v2:  # new in 10.1
            return self._header["activations"]
        if name == "get_engine_stat" and self._api.has_engine_stat:  # new in 10.14
            return self._engine_stat
        raise AttributeError(f"'tensorrt.ICudaEngine' object has no attribute '{name}'")

    @property
    def num_io_tensors(self) -> int:
        return len(self._tensors)

    @property
    def num_optimization_profiles(self) -> int:
        return max(1, len(self._header["profiles"]))

    @property
    def hardware_compatibility_level(self) -> Any:
        return self._runtime._trt.HardwareCompatibilityLevel[self._header["hardware_compatibility_level"]]

    def _engine_stat(self, stat: Any) -> int:
        _expect("get_engine_stat", stat=(stat, self._runtime._trt.EngineStat))
        if (self._api.major, self._api.minor) == (10, 14):
            # 10.14 binds it with py::keep_alive<0, 1>: pybind11 cannot make the int result keep the engine alive
            raise TypeError("cannot create weak reference to 'int' object")
        return self._header["weights"] if stat.name == "TOTAL_WEIGHTS_SIZE" else 0

    def get_tensor_name(self, index: int) -> str | None:
        return _indexed("get_tensor_name", list(self._tensors), index)

    def get_tensor_mode(self, name: str) -> Any:
        _expect("get_tensor_mode", name=(name, str))
        mode = self._tensors[name][0] if name in self._tensors else "NONE"
        return self._runtime._trt.TensorIOMode[mode]

    def get_tensor_dtype(self, name: str) -> DataType:
        _expect("get_tensor_dtype", name=(name, str))
        return self._tensors[name][1]

    def get_tensor_shape(self, name: str) -> Dims:
        _expect("get_tensor_shape", name=(name, str))
        return Dims(self._tensors[name][2])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
        _expect("get_tensor_profile_shape", name=(name, str), profile_index=(profile_index, int))
        return [Dims(s) for s in self._header["profiles"][profile_index][name]]

    def create_execution_context(self, strategy: Any = None) -> IExecutionContext:
        strategies = self._runtime._trt.ExecutionContextAllocationStrategy
        strategy = strategies.STATIC if strategy is None else strategy
        _expect("create_execution_context", strategy=(strategy, strategies))
        return IExecutionContext(self)

    def serialize(self) -> IHostMemory:
        return IHostMemory(PLAN_MAGIC + json.dumps(self._header).encode() + b"\n" + self._onnx)

    def _run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        import onnxruntime as ort

        if self._session is None:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            self._session = ort.InferenceSession(self._onnx, options, providers=["CPUExecutionProvider"])
        return self._session.run(None, inputs)


class IExecutionContext:
    __slots__ = ("_engine", "_shapes", "_addresses", "__weakref__")

    def __init__(self, engine: ICudaEngine) -> None:
        self._engine = engine  # py::keep_alive<0, 1>: the context keeps its engine alive
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._addresses: dict[str, int] = {}
        machine = engine._api.machine
        machine.reserved[id(self)] = engine._header["activations"]  # the STATIC strategy allocates it now
        weakref.finalize(self, machine.reserved.pop, id(self), None)

    def _error(self, message: str) -> bool:
        _emit(self._engine._runtime._logger, Severity.ERROR, message)
        return False

    def set_input_shape(self, name: str, shape: Any) -> bool:
        _expect("set_input_shape", name=(name, str))
        dims = _dims_arg("set_input_shape", "shape", shape)
        entry = self._engine._tensors.get(name)
        if entry is None or entry[0] != "INPUT":
            return self._error(f"setInputShape: {name} is not an input tensor")
        static = entry[2]
        profiles = self._engine._header["profiles"]
        low, high = (profiles[0][name][0], profiles[0][name][2]) if profiles else (static, static)
        if len(dims) != len(static) or any(not lo <= d <= hi for d, lo, hi in zip(dims, low, high, strict=True)):
            return self._error(f"setInputShape: {dims} is outside the profile {low}..{high} of {name}")
        self._shapes[name] = dims
        return True

    def get_tensor_shape(self, name: str) -> Dims:
        _expect("get_tensor_shape", name=(name, str))
        mode, _dtype, static, dim_names = self._engine._tensors[name]
        if mode == "INPUT":
            return Dims(self._shapes.get(name, static))
        known: dict[str, int] = {}
        for input_name, (input_mode, _t, _s, input_dims) in self._engine._tensors.items():
            if input_mode == "INPUT" and input_name in self._shapes:
                known.update({d: v for d, v in zip(input_dims, self._shapes[input_name], strict=True)
                              if isinstance(d, str)})
        return Dims(known.get(d, -1) if isinstance(d, str) else d for d in dim_names)

    def set_tensor_address(self, name: str, memory: int) -> bool:
        _expect("set_tensor_address", name=(name, str), memory=(memory, "size_t"))
        if name not in self._engine._tensors:
            return self._error(f"setTensorAddress: no tensor named {name}")
        self._addresses[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        _expect("execute_async_v3", stream_handle=(stream_handle, "size_t"))  # a size_t, not a cudaStream_t
        machine = self._engine._api.machine
        if stream_handle not in machine.streams:
            return self._error("enqueueV3: invalid CUDA stream")
        tensors = self._engine._tensors
        inputs = {}
        for name, (mode, dtype, _static, _dims) in tensors.items():
            shape = tuple(self.get_tensor_shape(name))
            if -1 in shape:
                return self._error(f"enqueueV3: the shape of {name} is not set")
            nbytes = int(np.prod(shape)) * np.dtype(nptype(dtype)).itemsize
            address = self._addresses.get(name)
            if address is None or not machine.allocation(address, nbytes):
                return self._error(f"enqueueV3: {name} has no valid device address for {nbytes} bytes")
            if mode == "INPUT":
                raw = (ctypes.c_char * nbytes).from_address(address)
                inputs[name] = np.frombuffer(raw, dtype=nptype(dtype)).reshape(shape).copy()
        outputs = [n for n, entry in tensors.items() if entry[0] == "OUTPUT"]
        for name, value in zip(outputs, self._engine._run(inputs), strict=True):
            data = np.ascontiguousarray(value, dtype=nptype(tensors[name][1]))
            ctypes.memmove(self._addresses[name], data.ctypes.data, data.nbytes)
        machine.advance(stream_handle, FAKE_COMPUTE_MS)
        return True
