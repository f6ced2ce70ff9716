"""What a target whose converter starts from the verified ONNX rebuilt in torch (``toolchains.workers.onnx_as_torch``:
ethos-u, litert, coreml) refuses: a dynamic shape, another batch than 1 where the target says why. (Every opset a
request takes, ``api.request.OPSETS``, is one the rebuild reads.)"""

from __future__ import annotations

from ..api.request import BuildRequest
from ..core.errors import InputError


def check_rebuilt(target: str, request: BuildRequest, *, static_because: str,
                  batch_1_because: str | None = None) -> None:
    if request.dynamic:
        raise InputError(f"{target} builds static shapes ({static_because}); drop --dynamic")
    if batch_1_because is not None and request.shape.batch != 1:
        raise InputError(f"{target} builds batch 1 ({batch_1_because}), not --batch {request.shape.batch}")
