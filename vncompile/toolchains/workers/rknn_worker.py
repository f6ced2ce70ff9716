"""rknn-toolkit2 behind vncompile's worker protocol.

Runs in the rknn toolchain's environment (its numpy 1.26, onnx 1.18): imports only
the standard library, numpy (the SDK's own dependency) and the SDK. Arrays travel
as .npy files whose paths are in the requests.
"""

import importlib.metadata
import os

import numpy as np
from vncompile_worker_protocol import serve


class RknnWorker:
    def __init__(self, rknn_class):
        self._make = rknn_class
        self._rknn = None

    def handlers(self):
        return {"build": self.build, "load_rknn": self.load_rknn, "init_runtime": self.init_runtime,
                "infer": self.infer, "eval_perf": self.eval_perf, "eval_memory": self.eval_memory,
                "release": self.release}

    def build(self, args):
        """config -> load_onnx -> build [-> export_rknn]; verbose, so the compiler prints its plans."""
        rknn = self._fresh()
        _check(rknn.config(target_platform=args["platform"], quantized_algorithm=args.get("quant_algorithm") or
                           "normal", mean_values=None, std_values=None), "config")
        _check(rknn.load_onnx(model=args["onnx"]), "load_onnx")
        _check(rknn.build(do_quantization=bool(args["quantize"]), dataset=args.get("dataset")), "build")
        if args.get("export"):
            _check(rknn.export_rknn(args["export"]), "export_rknn")
        return {}

    def load_rknn(self, args):
        _check(self._fresh().load_rknn(args["path"]), "load_rknn")
        return {}

    def init_runtime(self, args):
        _check(self._current().init_runtime(target=args.get("target"), device_id=args.get("device_id"),
                                            perf_debug=bool(args.get("perf_debug")),
                                            eval_mem=bool(args.get("eval_mem"))), "init_runtime")
        return {}

    def infer(self, args):
        inputs = [np.load(path) for path in args["inputs"]]
        outputs = self._current().inference(inputs=inputs, data_format=["nchw"] * len(inputs))
        if outputs is None:
            raise RuntimeError("rknn inference returned no outputs")
        paths = []
        for i, output in enumerate(outputs):
            path = os.path.join(args["output_dir"], f"output{i}.npy")
            np.save(path, np.asarray(output))
            paths.append(path)
        return {"outputs": paths}

    def eval_perf(self, args):
        return {"result": self._current().eval_perf(is_print=True)}

    def eval_memory(self, args):
        return {"result": self._current().eval_memory(is_print=True)}

    def release(self, args):
        if self._rknn is not None:
            self._rknn.release()
            self._rknn = None
        return {}

    def _fresh(self):
        self.release({})
        self._rknn = self._make(verbose=True)
        return self._rknn

    def _current(self):
        if self._rknn is None:
            raise RuntimeError("no model: send 'build' or 'load_rknn' first")
        return self._rknn


def _check(code, step):
    if code != 0:
        raise RuntimeError(f"rknn {step} failed (returned {code})")


def start():
    from rknn.api import RKNN  # only now: the SDK may print while it imports, and stdout is the log by then

    return RknnWorker(RKNN).handlers(), {"package": "rknn-toolkit2",
                                         "version": importlib.metadata.version("rknn-toolkit2")}


if __name__ == "__main__":
    serve(start)
