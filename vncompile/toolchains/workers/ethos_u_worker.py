"""litert-torch + ethos-u-vela behind vncompile's worker protocol.

Runs in the ethos-u toolchain's environment: the verified ONNX becomes a torch module node for node
(``onnx_as_torch``), is quantized to int8 with litert-torch's PT2E quantizer (symmetric, per-channel
weights) on the calibration inputs, converted to a fully int8 TFLite with NHWC input, then compiled by
vela (in this process, its output going to the build log). The LiteRT interpreter runs the int8 TFLite
for verification; vela's output runs only on the device. Arrays travel as .npy files.
"""

import csv
import glob
import importlib.metadata
import os
import re

import numpy as np
from vncompile_worker_protocol import serve


class EthosUWorker:
    def __init__(self):
        self._interpreter = None

    def handlers(self):
        return {"convert": self.convert, "vela": self.vela, "load": self.load, "infer": self.infer,
                "run_as_torch": self.run_as_torch}

    def run_as_torch(self, args):
        """The ONNX rebuilt in torch, run in float32 on one input: the converter's starting point, checked."""
        import onnx
        import torch
        from onnx_as_torch import OnnxAsTorch

        module = OnnxAsTorch(onnx.load(args["onnx"])).eval()
        with torch.no_grad():
            outputs = module(torch.from_numpy(np.load(args["input"])))
        paths = []
        for i, output in enumerate(outputs if isinstance(outputs, tuple) else (outputs,)):
            path = os.path.join(args["output_dir"], f"float{i}.npy")
            np.save(path, output.numpy())
            paths.append(path)
        return {"outputs": paths}

    def convert(self, args):
        """ONNX -> int8 TFLite (NHWC input, int8 input and output)."""
        import litert_torch
        import onnx
        import torch
        from litert_torch.quantize import pt2e_quantizer
        from litert_torch.quantize.quant_config import QuantConfig
        from onnx_as_torch import OnnxAsTorch
        from torchao.quantization.pt2e import quantize_pt2e

        torch.manual_seed(0)
        module = OnnxAsTorch(onnx.load(args["onnx"])).eval()
        samples = np.load(args["calibration"])
        example = torch.from_numpy(samples[:1])
        with torch.no_grad():
            graph = torch.export.export(module, (example,)).module()
            quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
                pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
            graph = quantize_pt2e.prepare_pt2e(graph, quantizer)
            for sample in samples:
                graph(torch.from_numpy(sample[None]))
            graph = quantize_pt2e.convert_pt2e(graph, fold_quantize=False)
            channels_last = litert_torch.to_channel_last_io(graph, args=[0])
            edge = litert_torch.convert(channels_last, (example.permute(0, 2, 3, 1).contiguous(),),
                                        quant_config=QuantConfig(pt2e_quantizer=quantizer))
        edge.export(args["output"])
        return {}

    def vela(self, args):
        """vela on the int8 TFLite; its summary (one row) and the per-layer rows."""
        from ethosu.vela.vela import main

        argv = [args["tflite"], "--output-dir", args["output_dir"], "--config", "Arm/vela.ini",
                "--accelerator-config", args["accelerator"], "--system-config", args["system_config"],
                "--memory-mode", args["memory_mode"], "--show-cpu-operations", "--verbose-performance"]
        code = main(argv)
        if code != 0:
            raise RuntimeError(f"vela failed (exit code {code})")
        summaries = glob.glob(os.path.join(args["output_dir"], "*_summary_*.csv"))
        layers = glob.glob(os.path.join(args["output_dir"], "*_per-layer.csv"))
        optimized = glob.glob(os.path.join(args["output_dir"], "*_vela.tflite"))
        if not len(summaries) == len(layers) == len(optimized) == 1:
            raise RuntimeError(f"vela wrote {len(optimized)} optimized models, {len(summaries)} summaries and "
                               f"{len(layers)} per-layer tables, not one of each")
        with open(summaries[0], newline="") as f:
            summary = next(csv.DictReader(f))
        return {"summary": summary, "summary_csv": summaries[0], "layers_csv": layers[0],
                "optimized": optimized[0]}

    def load(self, args):
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_path=args["tflite"], num_threads=1)
        self._interpreter.allocate_tensors()
        return {"inputs": [_describe(d) for d in self._interpreter.get_input_details()],
                "outputs": [_describe(d) for d in self._interpreter.get_output_details()]}

    def infer(self, args):
        """One NCHW float input, quantized with the model's input scale, NHWC; outputs dequantized."""
        if self._interpreter is None:
            raise RuntimeError("no model: send 'load' first")
        it = self._interpreter
        (inp,) = it.get_input_details()
        (path,) = args["inputs"]
        x = np.load(path).transpose(0, 2, 3, 1)
        it.set_tensor(inp["index"], _quantize(x, inp))
        it.invoke()
        paths = []
        for i, out in enumerate(_in_model_order(it.get_output_details())):
            path = os.path.join(args["output_dir"], f"output{i}.npy")
            np.save(path, _dequantize(it.get_tensor(out["index"]), out))
            paths.append(path)
        return {"outputs": paths}


def _in_model_order(details):
    """Outputs in the torch module's order: the converter names them ``..._output_<i>...``, and the
    interpreter lists them by tensor index, not by that position."""
    if len(details) == 1:
        return details
    positions = [re.search(r"output_(\d+)", d["name"]) for d in details]
    if not all(positions):
        raise RuntimeError(f"cannot tell the outputs' order from their names: {[d['name'] for d in details]}")
    return [d for _, d in sorted(zip((int(p.group(1)) for p in positions), details, strict=True),
                                 key=lambda pair: pair[0])]


def _describe(detail):
    scale, zero_point = detail["quantization"]
    return {"name": detail["name"], "shape": [int(v) for v in detail["shape"]], "dtype": np.dtype(detail["dtype"]).name,
            "scale": float(scale), "zero_point": int(zero_point)}


def _quantize(x, detail):
    scale, zero_point = detail["quantization"]
    if not scale:
        return x.astype(detail["dtype"])
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(detail["dtype"])


def _dequantize(y, detail):
    scale, zero_point = detail["quantization"]
    return (y.astype(np.float32) if not scale else (y.astype(np.float32) - zero_point) * np.float32(scale))


def start():
    import ai_edge_litert.interpreter  # noqa: F401 - fail here, before 'ready', if the environment is broken
    import ethosu.vela  # noqa: F401
    import litert_torch  # noqa: F401

    return EthosUWorker().handlers(), {"package": "ethos-u-vela", "version": importlib.metadata.version("ethos-u-vela"),
                                       "litert_torch": importlib.metadata.version("litert-torch")}


if __name__ == "__main__":
    serve(start)
