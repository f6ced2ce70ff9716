"""litert-torch, the LiteRT interpreter and ethos-u-vela behind vncompile's worker protocol.

Runs in the ethos-u toolchain's environment, for the ethos-u and litert targets: the verified ONNX becomes a
torch module node for node (``onnx_as_torch``) and litert-torch converts it to a TFLite, NHWC input or NCHW:
int8 quantized with litert-torch's PT2E quantizer (symmetric, per-channel weights) on the calibration inputs
(fully int8), fp16 with its weights cast to float16 by ai-edge-quantizer (float compute), or fp32. vela
compiles the int8 TFLite for the Ethos-U (in this process, its output going to the build log). The LiteRT
interpreter, with its default XNNPACK delegate, runs a TFLite for verification and times it; vela's output
runs only on the device. Arrays travel as .npy files.
"""

import csv
import glob
import importlib.metadata
import os
import re
import time

import numpy as np
from vncompile_worker_protocol import serve


class EthosUWorker:
    def __init__(self):
        self._interpreter = None
        self._layout = "nhwc"
        self._baseline_kb = None

    def handlers(self):
        return {"convert": self.convert, "vela": self.vela, "load": self.load, "infer": self.infer,
                "run_as_torch": self.run_as_torch, "time": self.time, "memory": self.memory}

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
        """ONNX -> TFLite: ``precision`` int8 (fully int8, int8 input and output; the default), fp16 (float16
        weights) or fp32; ``layout`` nhwc (the default: the input channels-last, the outputs in the network's
        layout) or nchw (the network's own layout at the input, a TRANSPOSE inside)."""
        import litert_torch
        import onnx
        import torch
        from onnx_as_torch import OnnxAsTorch

        precision, layout = args.get("precision", "int8"), args.get("layout", "nhwc")
        torch.manual_seed(0)
        module = OnnxAsTorch(onnx.load(args["onnx"])).eval()
        example = torch.from_numpy(np.load(args["example"] if "example" in args else args["calibration"])[:1])
        with torch.no_grad():
            if precision == "int8":
                module, quant_config = _quantized(module, example, np.load(args["calibration"]))
            else:
                quant_config = None
            if layout == "nhwc":
                module = litert_torch.to_channel_last_io(module, args=[0])
                example = example.permute(0, 2, 3, 1).contiguous()
            edge = litert_torch.convert(module, (example,), quant_config=quant_config)
        if precision != "fp16":
            edge.export(args["output"])
            return {}
        edge.export(args["output"] + ".fp32")
        _float16_weights(args["output"] + ".fp32", args["output"])
        os.remove(args["output"] + ".fp32")
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
        """The TFLite on the interpreter with its default delegate (XNNPACK), ``threads`` threads; which
        operators XNNPACK left to the interpreter's own kernels. The process's peak memory is counted from here."""
        from ai_edge_litert.interpreter import Interpreter

        self._baseline_kb = _reset_peak_rss()
        self._layout = args.get("layout", "nhwc")
        self._interpreter = Interpreter(model_path=args["tflite"], num_threads=int(args.get("threads", 1)))
        self._interpreter.allocate_tensors()
        ops = self._interpreter._get_ops_details()
        return {"inputs": [_describe(d) for d in self._interpreter.get_input_details()],
                "outputs": [_describe(d) for d in self._interpreter.get_output_details()],
                "operators": sum(op["op_name"] != "DELEGATE" for op in ops),
                "delegate_partitions": sum(op["op_name"] == "DELEGATE" for op in ops),
                "cpu_operators": undelegated(ops)}

    def _set_input(self, path):
        if self._interpreter is None:
            raise RuntimeError("no model: send 'load' first")
        (inp,) = self._interpreter.get_input_details()
        x = np.load(path)
        self._interpreter.set_tensor(inp["index"], _quantize(x.transpose(0, 2, 3, 1) if self._layout == "nhwc" else x,
                                                             inp))

    def _outputs(self):
        it = self._interpreter
        return [_dequantize(it.get_tensor(out["index"]), out) for out in _in_model_order(it.get_output_details())]

    def infer(self, args):
        """One NCHW float input (quantized with the model's input scale where it takes int8, NHWC where its
        layout is); outputs dequantized."""
        (path,) = args["inputs"]
        self._set_input(path)
        self._interpreter.invoke()
        paths = []
        for i, output in enumerate(self._outputs()):
            path = os.path.join(args["output_dir"], f"output{i}.npy")
            np.save(path, output)
            paths.append(path)
        return {"outputs": paths}

    def time(self, args):
        """Wall-clock milliseconds of each run (setting the input, invoke, reading the outputs), after warm-up."""
        samples = []
        for i in range(int(args["warmup"]) + int(args["runs"])):
            start = time.perf_counter()
            self._set_input(args["input"])
            self._interpreter.invoke()
            self._outputs()
            if i >= int(args["warmup"]):
                samples.append((time.perf_counter() - start) * 1e3)
        return {"samples_ms": samples}

    def memory(self, args):
        """This process's peak resident memory above what it held just before ``load`` (KB; Linux)."""
        peak = _proc_status_kb("VmHWM")
        if self._baseline_kb is None or peak is None:
            return {"peak_kb": None}
        return {"peak_kb": max(0, peak - self._baseline_kb)}


def undelegated(ops):
    """The operators a delegate did not take (they run on the interpreter's own kernels): each DELEGATE node
    stands for the operators between its inputs and its outputs, found walking back from its outputs to its
    inputs; every other operator is left out of the delegates. The interpreter's Python API lists every node of
    the graph, the replaced ones too, plus one DELEGATE node per partition, and names no placement itself."""
    producer = {int(t): op for op in ops if op["op_name"] != "DELEGATE" for t in op["outputs"]}
    taken = set()
    for partition in (op for op in ops if op["op_name"] == "DELEGATE"):
        boundary = {int(t) for t in partition["inputs"]}
        pending = [int(t) for t in partition["outputs"]]
        while pending:
            tensor = pending.pop()
            op = producer.get(tensor)
            if tensor in boundary or op is None or op["index"] in taken:
                continue
            taken.add(op["index"])
            pending.extend(int(t) for t in op["inputs"] if int(t) >= 0)
    return [{"op": op["op_name"], "index": int(op["index"])} for op in ops
            if op["op_name"] != "DELEGATE" and op["index"] not in taken]


def _quantized(module, example, samples):
    """The module quantized by litert-torch's PT2E quantizer (int8, symmetric, per-channel weights), calibrated
    on ``samples``; with the QuantConfig its conversion needs."""
    import torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    graph = torch.export.export(module, (example,)).module()
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
    graph = quantize_pt2e.prepare_pt2e(graph, quantizer)
    for sample in samples:
        graph(torch.from_numpy(sample[None]))
    return quantize_pt2e.convert_pt2e(graph, fold_quantize=False), QuantConfig(pt2e_quantizer=quantizer)


def _float16_weights(source, output):
    """Every weight of a float TFLite cast to float16 (ai-edge-quantizer's float casting: a DEQUANTIZE to
    float32 before each op, which XNNPACK folds into its float32 kernels' packed weights)."""
    from ai_edge_quantizer import quantizer, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    recipe = recipe_manager.RecipeManager()
    recipe.add_weight_only_config(regex=".*", operation_name="*", num_bits=16,
                                  algorithm_key=AlgorithmName.FLOAT_CASTING)
    quantizer.Quantizer(source, recipe.get_quantization_recipe()).quantize().export_model(output, overwrite=True)


def _proc_status_kb(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss():
    """Resets the kernel's peak-RSS mark to the current RSS (Linux); returns that baseline in KB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _proc_status_kb("VmRSS")


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
                                       "litert_torch": importlib.metadata.version("litert-torch"),
                                       "ai_edge_litert": importlib.metadata.version("ai-edge-litert")}


if __name__ == "__main__":
    serve(start)
