"""A simplified ONNX graph as a torch module, node for node, for converters that start from torch.

Runs in a toolchain's environment (torch, numpy, onnx; nothing of vncompile). The graph is the one the
pipeline verified (after simplification and the graph passes), so what a torch-based converter sees
is exactly that graph, not a second export of the network. The op set is what vncompile's simplified
graphs contain (VanillaNet, the baselines, the detection backbone, tiled strips); anything else is
refused by name.

Written the way PT2E quantizers match their patterns: weights as parameters; each ReLU its own
``nn.ReLU`` module and each Add ``torch.add`` (litert-torch's quantizer fuses Add+ReLU only in that
form: otherwise a residual network's ReLUs stay float and fall back to the CPU); global average
pooling as ``adaptive_avg_pool2d``. Space-to-depth is 4-D reshapes and a transpose in NHWC, the layout
the converters emit, in ONNX's channel order.
"""

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

SUPPORTED = ("Add", "Concat", "Conv", "Flatten", "Gemm", "GlobalAveragePool", "Identity", "LeakyRelu", "MaxPool",
             "Pad", "ReduceMean", "Relu", "Reshape", "Slice", "SpaceToDepth")


class OnnxAsTorch(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        graph = model.graph
        unsupported = sorted({n.op_type for n in graph.node} - set(SUPPORTED))
        if unsupported:
            raise ValueError(f"the graph has operators this converter does not take: {', '.join(unsupported)}")
        self.constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        inputs = [i.name for i in graph.input if i.name not in self.constants]  # opset < 9 lists initializers
        if len(inputs) != 1:
            raise ValueError(f"the graph has {len(inputs)} inputs; one image input expected")
        self.weights = torch.nn.ParameterDict()
        self.weight_key = {}
        for node in graph.node:
            if node.op_type in ("Conv", "Gemm"):
                for j, name in enumerate(node.input[1:3]):
                    if name and name not in self.weight_key:
                        weight = np.array(self._constant(name, node))
                        if node.op_type == "Gemm" and j == 0 and not _attribute(node, "transB", 0):
                            weight = weight.T.copy()  # stored as linear's (out, in), not transposed per call
                        key = f"w{len(self.weight_key)}"
                        self.weights[key] = torch.nn.Parameter(torch.from_numpy(weight), requires_grad=False)
                        self.weight_key[name] = key
        # Other constants used as operands (an Add's bias, say) become buffers: values like any other.
        operands = {name for n in graph.node if n.op_type in ("Add", "Concat", "Identity") for name in n.input}
        for i, name in enumerate(sorted(operands & set(self.constants))):
            self.register_buffer(f"c{i}", torch.from_numpy(np.array(self.constants[name])))
        self.operand_buffer = {name: f"c{i}" for i, name in enumerate(sorted(operands & set(self.constants)))}
        self.relus = torch.nn.ModuleDict({str(i): torch.nn.ReLU() for i, n in enumerate(graph.node)
                                          if n.op_type == "Relu"})
        self.nodes = [(n.op_type, list(n.input), list(n.output),
                       {"index": str(i), **{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}})
                      for i, n in enumerate(graph.node)]
        self.input_name = inputs[0]
        self.output_names = [o.name for o in graph.output]

    def _constant(self, name, node):
        if name not in self.constants:
            raise ValueError(f"{node.op_type} node '{node.name}' takes '{name}' from the graph, not as a constant; "
                             "simplify the graph first")
        return self.constants[name]

    def forward(self, x):
        values = {self.input_name: x, **{name: getattr(self, key) for name, key in self.operand_buffer.items()}}
        for op, inputs, outputs, attrs in self.nodes:
            args = [values.get(name) for name in inputs]
            values[outputs[0]] = getattr(self, f"_{op}")(inputs, args, attrs)
        results = tuple(values[name] for name in self.output_names)
        return results[0] if len(results) == 1 else results

    def _weight(self, name):
        return self.weights[self.weight_key[name]] if name else None

    def _ints(self, name):
        if name not in self.constants:
            raise ValueError(f"'{name}' is computed in the graph, not a constant; simplify the graph first")
        return [int(v) for v in np.asarray(self.constants[name]).reshape(-1)]

    def _Conv(self, inputs, args, attrs):
        x = args[0]
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise ValueError("Conv with auto_pad: simplify the graph first")
        if pads[:2] != pads[2:]:  # asymmetric: pad explicitly (left, right, top, bottom)
            x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
            pads = [0, 0, 0, 0]
        return F.conv2d(x, self._weight(inputs[1]), self._weight(inputs[2]) if len(inputs) > 2 else None,
                        attrs.get("strides", [1, 1]), pads[:2], attrs.get("dilations", [1, 1]), attrs.get("group", 1))

    def _Relu(self, inputs, args, attrs):
        return self.relus[attrs["index"]](args[0])

    def _LeakyRelu(self, inputs, args, attrs):
        return F.leaky_relu(args[0], attrs.get("alpha", 0.01))

    def _MaxPool(self, inputs, args, attrs):
        x, pads = args[0], list(attrs.get("pads", [0, 0, 0, 0]))
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise ValueError("MaxPool with auto_pad: simplify the graph first")
        if attrs.get("ceil_mode", 0) or pads[:2] != pads[2:]:
            raise ValueError("MaxPool with ceil_mode or asymmetric pads is not taken")
        return F.max_pool2d(x, attrs["kernel_shape"], attrs.get("strides", [1, 1]), pads[:2],
                            attrs.get("dilations", [1, 1]))

    def _global_average(self, x, keepdims):
        y = F.adaptive_avg_pool2d(x, 1)
        return y if keepdims else torch.flatten(y, 1)

    def _GlobalAveragePool(self, inputs, args, attrs):
        return self._global_average(args[0], True)

    def _ReduceMean(self, inputs, args, attrs):
        axes = attrs.get("axes") or (self._ints(inputs[1]) if len(inputs) > 1 else [])
        if sorted(a % 4 for a in axes) != [2, 3] or args[0].dim() != 4:
            raise ValueError(f"ReduceMean over axes {axes} is not a global average pool")
        return self._global_average(args[0], bool(attrs.get("keepdims", 1)))

    def _Reshape(self, inputs, args, attrs):
        shape = self._ints(inputs[1])
        x = args[0]
        shape = [x.shape[i] if v == 0 and not attrs.get("allowzero", 0) else v for i, v in enumerate(shape)]
        return x.reshape(shape)

    def _Flatten(self, inputs, args, attrs):
        axis = attrs.get("axis", 1)
        return args[0].reshape(int(np.prod(args[0].shape[:axis])), -1)

    def _Gemm(self, inputs, args, attrs):
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            raise ValueError("Gemm with transA, alpha or beta is not taken")
        return F.linear(args[0], self._weight(inputs[1]), self._weight(inputs[2]) if len(inputs) > 2 else None)

    def _Add(self, inputs, args, attrs):
        return torch.add(args[0], args[1])

    def _Identity(self, inputs, args, attrs):
        return args[0]

    def _Concat(self, inputs, args, attrs):
        return torch.cat(args, dim=attrs["axis"])

    def _Slice(self, inputs, args, attrs):
        x = args[0]
        starts, ends = self._ints(inputs[1]), self._ints(inputs[2])
        axes = self._ints(inputs[3]) if len(inputs) > 3 and inputs[3] else list(range(len(starts)))
        steps = self._ints(inputs[4]) if len(inputs) > 4 and inputs[4] else [1] * len(starts)
        index = [slice(None)] * x.dim()
        for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
            index[axis % x.dim()] = slice(start, min(end, x.shape[axis]), step)
        return x[tuple(index)]

    def _Pad(self, inputs, args, attrs):
        pads = self._ints(inputs[1])
        if attrs.get("mode", b"constant") not in (b"constant", "constant"):
            raise ValueError("only constant Pad is taken")
        if len(inputs) > 3 and inputs[3]:
            raise ValueError("Pad with axes is not taken")
        value = float(np.asarray(self.constants[inputs[2]]).reshape(-1)[0]) if len(inputs) > 2 and inputs[2] else 0.0
        half = len(pads) // 2
        if pads[:2] != [0, 0] or pads[half:half + 2] != [0, 0] or half != 4:
            raise ValueError("Pad other than spatial padding of a 4-D tensor is not taken")
        return F.pad(args[0], (pads[3], pads[7], pads[2], pads[6]), value=value)

    def _SpaceToDepth(self, inputs, args, attrs):
        # ONNX order (output channel = (row * b + col) * C + c) is NHWC's natural one: reshape and transpose
        # there, in 4-D, which NPUs take (a 6-D NCHW transpose they do not).
        b, x = attrs["blocksize"], args[0]
        n, c, h, w = x.shape
        nhwc = x.permute(0, 2, 3, 1).reshape(n * h // b, b, w // b, b * c).permute(0, 2, 1, 3)
        return nhwc.reshape(n, h // b, w // b, b * b * c).permute(0, 3, 1, 2)


def _attribute(node, name, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default
