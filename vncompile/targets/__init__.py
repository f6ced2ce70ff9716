"""Target plugins, found through the ``vncompile.targets`` entry-point group.

The built-in targets are listed here, and only here (a source checkout that was
never installed finds them too); installed distributions' entry points add third-party
targets beside them, never in place of one. A plugin that fails to import is listed
as unavailable, with why.
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points

from ..api.target import Availability, Target
from ..core.errors import InputError
from ..core.schema import Setting, settings_of

ENTRY_POINT_GROUP = "vncompile.targets"
BUILTIN_TARGETS: dict[str, str] = {
    "onnxruntime": "vncompile.targets.onnxruntime:OnnxRuntimeTarget",
    "openvino": "vncompile.targets.openvino:OpenVinoTarget",
    "tensorrt": "vncompile.targets.tensorrt:TensorRTTarget",
    "rknn": "vncompile.targets.rknn:RknnTarget",
    "qnn": "vncompile.targets.qnn:QnnTarget",
    "ethos-u": "vncompile.targets.ethos_u:EthosUTarget",
    "litert": "vncompile.targets.litert:LiteRtTarget",
    "coreml": "vncompile.targets.coreml:CoreMlTarget",
    "analytic": "vncompile.targets.analytic:AnalyticTarget",
}


def _target_paths() -> dict[str, str]:
    paths = dict(BUILTIN_TARGETS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        paths.setdefault(ep.name, ep.value)
    return paths


def target_names() -> list[str]:
    return list(_target_paths())


class BrokenTarget(Target):
    """Stands in for a plugin whose module failed to import, so listing still works."""

    description = "plugin failed to load"
    precisions = ()

    def __init__(self, name: str, error: str) -> None:
        self.name, self._error = name, error  # type: ignore[misc]

    def availability(self) -> Availability:
        return Availability(False, None, f"plugin failed to load: {self._error}")

    def compile(self, ctx):  # pragma: no cover - never available
        raise InputError(self._error)

    def load(self, build_dir, manifest):  # pragma: no cover - never available
        raise InputError(self._error)


@cache
def get_target(name: str) -> Target:
    paths = _target_paths()
    if name not in paths:
        raise InputError(f"unknown target '{name}'; choose from {', '.join(paths)}")
    module_name, _, attr = paths[name].partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # a third-party plugin's bug must not break every command
        return BrokenTarget(name, f"{type(exc).__name__}: {exc}")
    return cls()


def require_available(target: str | Target) -> Target:
    """The target (or the one named), or a one-line error saying why it cannot run here and what fixes it."""
    target = get_target(target) if isinstance(target, str) else target
    availability = target.availability()
    if not availability.available:
        raise InputError(f"target '{target.name}' is not available: {availability.reason}")
    return target


def own_option_declarations() -> dict[str, Setting]:
    """Every target's own options by name (``Target.own_options``): the command line's flags and the words of a
    refusal come from here. Two targets may share an option (the same name, flag and kind)."""
    declarations: dict[str, Setting] = {}
    for name in target_names():
        for option, (_field, declared) in settings_of(get_target(name).own_options).items():
            declarations.setdefault(option, declared)
    return declarations
