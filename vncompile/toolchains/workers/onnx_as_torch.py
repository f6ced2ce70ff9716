"""An ONNX graph as a torch module, node for node: for converters that start from torch, and as the float64
reference of a graph vncompile did not export.

Runs in a toolchain's environment (torch, numpy, onnx; nothing of vncompile). For a converter, the graph
is the one the pipeline verified (after simplification and the graph passes), so what a torch-based
converter sees is exactly that graph, not a second export of the network. For an external graph (a whole
detector: backbone, neck, head and box decoding), ``OnnxAsTorch(model, dtype=torch.float64)`` computes its
function in float64: constants and inputs are cast to that dtype, and so is every Cast to a floating type.
The op set is what classifiers, backbones and YOLO-style detectors contain (the attention of YOLO11's
C2PSA, and the top-k selection of NMS-free end-to-end heads, included; a NonMaxSuppression op is not);
anything else is refused with the op and the node's name. Subgraphs of constants (Constant nodes, shapes
computed from constants) are folded once, when the module is built; shapes computed from a tensor
(``Shape``) are not taken: simplify the graph first.

Written the way PT2E quantizers match their patterns: weights as parameters; each ReLU its own
``nn.ReLU`` module and each Add ``torch.add`` (litert-torch's quantizer fuses Add+ReLU only in that
form: otherwise a residual network's ReLUs stay float and fall back to the CPU); global average
pooling as ``adaptive_avg_pool2d``. Space-to-depth is 4-D reshapes and a transpose in NHWC, the layout
the converters emit, in ONNX's channel order.
"""

import math

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

# Inputs read once, as constants, when the module is built (weights, shapes, axes, scales); every other
# input is a tensor (a constant one becomes a buffer).
PARAMETER_INPUTS = {"Conv": (1, 2), "Gemm": (1, 2), "Reshape": (1,), "Slice": (1, 2, 3, 4), "Pad": (1, 2, 3),
                    "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceSum": (1,), "Split": (1,),
                    "Unsqueeze": (1,), "Squeeze": (1,), "Resize": (1, 2, 3), "Clip": (1, 2), "TopK": (1,),
                    "Expand": (1,), "Tile": (1,)}
# Since which opset a reduction takes its axes as an input rather than an attribute.
AXES_INPUT_SINCE = {"ReduceSum": 13, "ReduceMean": 18, "ReduceMax": 18, "ReduceMin": 18}

SUPPORTED = ("Abs", "Add", "ArgMax", "AveragePool", "Cast", "Clip", "Concat", "Constant", "Conv", "Div", "Equal", "Erf",
             "Exp", "Expand", "Flatten", "Gather", "GatherElements", "Gemm", "GlobalAveragePool", "Greater",
             "HardSigmoid", "HardSwish", "Identity", "LeakyRelu", "Less", "Log", "MatMul", "Max", "MaxPool", "Min",
             "Mod", "Mul", "Neg", "Not", "Pad", "Pow", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceSum", "Relu",
             "Reshape", "Resize", "Sigmoid", "Slice", "Softmax", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub",
             "Tanh", "Tile", "TopK", "Transpose", "Unsqueeze", "Where")


class OnnxAsTorch(torch.nn.Module):
    """``model``'s function; ``dtype`` (e.g. ``torch.float64``) computes it in that floating type instead of the
    graph's own (float inputs are cast to it)."""

    def __init__(self, model, dtype=None):
        super().__init__()
        graph = model.graph
        unsupported = {}
        for node in graph.node:
            if node.op_type not in SUPPORTED or node.domain not in ("", "ai.onnx"):
                unsupported.setdefault(node.op_type, node.name or node.output[0])
        if unsupported:
            raise ValueError("the graph has operators this converter does not take: "
                             + ", ".join(f"{op} (node '{name}')" for op, name in sorted(unsupported.items())))
        self.dtype = dtype
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
        self.constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        inputs = [i.name for i in graph.input if i.name not in self.constants]  # opset < 9 lists initializers
        if len(inputs) != 1:
            raise ValueError(f"the graph has {len(inputs)} inputs; one image input expected")
        self.weights = torch.nn.ParameterDict()
        self.weight_key = {}
        self.relus = torch.nn.ModuleDict()
        nodes = [(n.op_type, list(n.input), list(n.output),
                  {"index": str(i), "name": n.name or n.output[0], "outputs": len(n.output), "op": n.op_type,
                   **{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}})
                 for i, n in enumerate(graph.node)]
        self.nodes = self._fold_constants(nodes)
        for op, node_inputs, _, attrs in self.nodes:
            if op in ("Conv", "Gemm"):
                for j, name in enumerate(node_inputs[1:3]):
                    if name and name not in self.weight_key:
                        weight = np.array(self._constant(name, op, attrs))
                        if op == "Gemm" and j == 0 and not attrs.get("transB", 0):
                            weight = weight.T.copy()  # stored as linear's (out, in), not transposed per call
                        key = f"w{len(self.weight_key)}"
                        self.weights[key] = torch.nn.Parameter(self._tensor(weight), requires_grad=False)
                        self.weight_key[name] = key
            if op == "Relu":
                self.relus[attrs["index"]] = torch.nn.ReLU()
        # Other constants used as operands (an Add's bias, say) become buffers: values like any other.
        operands = {name for op, node_inputs, _, _ in self.nodes for j, name in enumerate(node_inputs)
                    if j not in PARAMETER_INPUTS.get(op, ())}
        operands = sorted((operands | {o.name for o in graph.output}) & set(self.constants))
        for i, name in enumerate(operands):
            self.register_buffer(f"c{i}", self._tensor(np.array(self.constants[name])))
        self.operand_buffer = {name: f"c{i}" for i, name in enumerate(operands)}
        self.input_name = inputs[0]
        self.output_names = [o.name for o in graph.output]

    def _tensor(self, array):
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        return tensor.to(self.dtype) if self.dtype is not None and tensor.is_floating_point() else tensor

    def _fold_constants(self, nodes):
        """Nodes whose inputs are all constants are run once, here; their outputs join the constants."""
        remaining = []
        for op, inputs, outputs, attrs in nodes:
            if op in ("Conv", "Gemm") or not all(name in self.constants for name in inputs if name):
                remaining.append((op, inputs, outputs, attrs))
                continue
            with torch.no_grad():
                args = [self._tensor(np.array(self.constants[name])) if name else None for name in inputs]
                result = getattr(self, f"_{op}")(inputs, args, attrs)
            for name, value in zip(outputs, result if isinstance(result, tuple) else (result,), strict=False):
                if name:
                    self.constants[name] = value.numpy()
        return remaining

    def _constant(self, name, op, attrs):
        if name not in self.constants:
            raise ValueError(f"{op} node '{attrs['name']}' takes '{name}' from the graph, not as a constant; "
                             "simplify the graph first")
        return self.constants[name]

    def forward(self, x):
        if self.dtype is not None and x.is_floating_point():
            x = x.to(self.dtype)
        values = {self.input_name: x, **{name: getattr(self, key) for name, key in self.operand_buffer.items()}}
        for op, inputs, outputs, attrs in self.nodes:
            args = [values.get(name) for name in inputs]
            result = getattr(self, f"_{op}")(inputs, args, attrs)
            if isinstance(result, tuple):
                values.update((name, value) for name, value in zip(outputs, result, strict=False) if name)
            else:
                values[outputs[0]] = result
        results = tuple(values[name] for name in self.output_names)
        return results[0] if len(results) == 1 else results

    def _weight(self, name):
        return self.weights[self.weight_key[name]] if name else None

    def _ints(self, name):
        if name not in self.constants:
            raise ValueError(f"'{name}' is computed in the graph, not a constant; simplify the graph first")
        return [int(v) for v in np.asarray(self.constants[name]).reshape(-1)]

    def _floats(self, name):
        if name not in self.constants:
            raise ValueError(f"'{name}' is computed in the graph, not a constant; simplify the graph first")
        return [float(v) for v in np.asarray(self.constants[name]).reshape(-1)]

    def _axes(self, inputs, attrs, position=1, since=13):
        """Axes as an attribute (before opset ``since``) or an optional constant input."""
        if self.opset < since:
            return list(attrs.get("axes", []))
        return self._ints(inputs[position]) if len(inputs) > position and inputs[position] else []

    # ------------------------------------------------------------------ convolution, pooling, dense

    def _Conv(self, inputs, args, attrs):
        x = args[0]
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise ValueError("Conv with auto_pad: simplify the graph first")
        if pads[:2] != pads[2:]:  # asymmetric: pad explicitly (left, right, top, bottom)
            x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
            pads = [0, 0, 0, 0]
        weight, bias = self._weight(inputs[1]), self._weight(inputs[2]) if len(inputs) > 2 else None
        strides, dilations, group = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1]), attrs.get("group", 1)
        if x.dtype == torch.float64 and group > 1 and group == x.shape[1] == weight.shape[0]:
            return _depthwise(F.pad(x, (pads[1], pads[1], pads[0], pads[0])), weight, bias, strides, dilations)
        return F.conv2d(x, weight, bias, strides, pads[:2], dilations, group)

    def _pool_pads(self, attrs, op):
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise ValueError(f"{op} with auto_pad: simplify the graph first")
        if attrs.get("ceil_mode", 0) or pads[:2] != pads[2:]:
            raise ValueError(f"{op} with ceil_mode or asymmetric pads is not taken")
        return pads[:2]

    def _MaxPool(self, inputs, args, attrs):
        pads = self._pool_pads(attrs, "MaxPool")
        return F.max_pool2d(args[0], attrs["kernel_shape"], attrs.get("strides", [1, 1]), pads,
                            attrs.get("dilations", [1, 1]))

    def _AveragePool(self, inputs, args, attrs):
        pads = self._pool_pads(attrs, "AveragePool")
        return F.avg_pool2d(args[0], attrs["kernel_shape"], attrs.get("strides", [1, 1]), pads,
                            count_include_pad=bool(attrs.get("count_include_pad", 0)))

    def _global_average(self, x, keepdims):
        y = F.adaptive_avg_pool2d(x, 1)
        return y if keepdims else torch.flatten(y, 1)

    def _GlobalAveragePool(self, inputs, args, attrs):
        return self._global_average(args[0], True)

    def _reduce_axes(self, inputs, args, attrs):
        axes = self._axes(inputs, attrs, since=AXES_INPUT_SINCE[attrs["op"]])
        if not axes and attrs.get("noop_with_empty_axes", 0):
            return None
        return [a % args[0].dim() for a in axes] or list(range(args[0].dim()))

    def _ReduceMean(self, inputs, args, attrs):
        axes, keepdims = self._reduce_axes(inputs, args, attrs), bool(attrs.get("keepdims", 1))
        if axes is None:
            return args[0]
        if sorted(axes) == [2, 3] and args[0].dim() == 4:
            return self._global_average(args[0], keepdims)
        return torch.mean(args[0], dim=axes, keepdim=keepdims)

    def _ReduceMax(self, inputs, args, attrs):
        axes = self._reduce_axes(inputs, args, attrs)
        return args[0] if axes is None else torch.amax(args[0], dim=axes, keepdim=bool(attrs.get("keepdims", 1)))

    def _ReduceMin(self, inputs, args, attrs):
        axes = self._reduce_axes(inputs, args, attrs)
        return args[0] if axes is None else torch.amin(args[0], dim=axes, keepdim=bool(attrs.get("keepdims", 1)))

    def _ReduceSum(self, inputs, args, attrs):
        axes = self._reduce_axes(inputs, args, attrs)
        return args[0] if axes is None else torch.sum(args[0], dim=axes, keepdim=bool(attrs.get("keepdims", 1)))

    def _TopK(self, inputs, args, attrs):
        (k,) = self._ints(inputs[1])
        values, indices = torch.topk(args[0], k, dim=attrs.get("axis", -1), largest=bool(attrs.get("largest", 1)),
                                     sorted=True)
        return values, indices

    def _ArgMax(self, inputs, args, attrs):
        x, axis, keepdims = args[0], attrs.get("axis", 0) % args[0].dim(), bool(attrs.get("keepdims", 1))
        if attrs.get("select_last_index", 0):
            return x.shape[axis] - 1 - torch.argmax(torch.flip(x, [axis]), dim=axis, keepdim=keepdims)
        return torch.argmax(x, dim=axis, keepdim=keepdims)

    def _Gemm(self, inputs, args, attrs):
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            raise ValueError("Gemm with transA, alpha or beta is not taken")
        return F.linear(args[0], self._weight(inputs[1]), self._weight(inputs[2]) if len(inputs) > 2 else None)

    def _MatMul(self, inputs, args, attrs):
        return torch.matmul(args[0], args[1])

    # ------------------------------------------------------------------ elementwise

    def _Relu(self, inputs, args, attrs):
        return self.relus[attrs["index"]](args[0]) if attrs["index"] in self.relus else F.relu(args[0])

    def _LeakyRelu(self, inputs, args, attrs):
        return F.leaky_relu(args[0], attrs.get("alpha", 0.01))

    def _Sigmoid(self, inputs, args, attrs):
        return torch.sigmoid(args[0])

    def _HardSigmoid(self, inputs, args, attrs):
        return torch.clamp(args[0] * attrs.get("alpha", 0.2) + attrs.get("beta", 0.5), 0, 1)

    def _HardSwish(self, inputs, args, attrs):
        return args[0] * torch.clamp(args[0] / 6 + 0.5, 0, 1)

    def _Tanh(self, inputs, args, attrs):
        return torch.tanh(args[0])

    def _Exp(self, inputs, args, attrs):
        return torch.exp(args[0])

    def _Sqrt(self, inputs, args, attrs):
        return torch.sqrt(args[0])

    def _Neg(self, inputs, args, attrs):
        return torch.neg(args[0])

    def _Clip(self, inputs, args, attrs):
        if self.opset < 11:
            low, high = attrs.get("min"), attrs.get("max")
        else:
            low, high = ((self._floats(inputs[j]) or [None])[0] if len(inputs) > j and inputs[j] else None
                         for j in (1, 2))
        return torch.clamp(args[0], low, high)

    def _Add(self, inputs, args, attrs):
        return torch.add(args[0], args[1])

    def _Sub(self, inputs, args, attrs):
        return torch.sub(args[0], args[1])

    def _Mul(self, inputs, args, attrs):
        return torch.mul(args[0], args[1])

    def _Div(self, inputs, args, attrs):
        a, b = args
        if not a.is_floating_point() and not b.is_floating_point():
            return torch.div(a, b, rounding_mode="trunc")
        return torch.div(a, b)

    def _Pow(self, inputs, args, attrs):
        return torch.pow(args[0], args[1])

    def _Mod(self, inputs, args, attrs):
        return torch.fmod(args[0], args[1]) if attrs.get("fmod", 0) else torch.remainder(args[0], args[1])

    def _Abs(self, inputs, args, attrs):
        return torch.abs(args[0])

    def _Log(self, inputs, args, attrs):
        return torch.log(args[0])

    def _Erf(self, inputs, args, attrs):
        return torch.erf(args[0])

    def _Max(self, inputs, args, attrs):
        result = args[0]
        for other in args[1:]:
            result = torch.maximum(result, other)
        return result

    def _Min(self, inputs, args, attrs):
        result = args[0]
        for other in args[1:]:
            result = torch.minimum(result, other)
        return result

    def _Equal(self, inputs, args, attrs):
        return torch.eq(args[0], args[1])

    def _Greater(self, inputs, args, attrs):
        return torch.gt(args[0], args[1])

    def _Less(self, inputs, args, attrs):
        return torch.lt(args[0], args[1])

    def _Not(self, inputs, args, attrs):
        return torch.logical_not(args[0])

    def _Where(self, inputs, args, attrs):
        return torch.where(args[0], args[1], args[2])

    def _Softmax(self, inputs, args, attrs):
        x = args[0]
        if self.opset >= 13:
            return torch.softmax(x, dim=attrs.get("axis", -1))
        axis = attrs.get("axis", 1) % x.dim()  # before opset 13: over the input flattened to 2-D at axis
        return torch.softmax(x.reshape(math.prod(x.shape[:axis]), -1), dim=1).reshape(x.shape)

    def _Cast(self, inputs, args, attrs):
        target = torch.from_numpy(np.zeros(0, onnx.helper.tensor_dtype_to_np_dtype(attrs["to"]))).dtype
        if self.dtype is not None and target.is_floating_point:
            target = self.dtype
        return args[0].to(target)

    def _Identity(self, inputs, args, attrs):
        return args[0]

    def _Constant(self, inputs, args, attrs):
        for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
            if key in attrs:
                value = attrs[key]
                array = numpy_helper.to_array(value) if key == "value" else np.array(
                    value, np.float32 if "float" in key else np.int64)
                return self._tensor(array)
        raise ValueError(f"Constant node '{attrs['name']}': only value, value_float(s) and value_int(s) are taken")

    # ------------------------------------------------------------------ shapes and indexing

    def _Reshape(self, inputs, args, attrs):
        shape = self._ints(inputs[1])
        x = args[0]
        shape = [x.shape[i] if v == 0 and not attrs.get("allowzero", 0) else v for i, v in enumerate(shape)]
        return x.reshape(shape)

    def _Flatten(self, inputs, args, attrs):
        axis = attrs.get("axis", 1)
        axis = axis + args[0].dim() if axis < 0 else axis
        return args[0].reshape(math.prod(args[0].shape[:axis]), -1)

    def _Transpose(self, inputs, args, attrs):
        perm = attrs.get("perm") or list(range(args[0].dim()))[::-1]
        return args[0].permute(*perm)

    def _Unsqueeze(self, inputs, args, attrs):
        x, axes = args[0], self._axes(inputs, attrs)
        rank = x.dim() + len(axes)
        for axis in sorted(a % rank for a in axes):
            x = x.unsqueeze(axis)
        return x

    def _Squeeze(self, inputs, args, attrs):
        x, axes = args[0], self._axes(inputs, attrs)
        if not axes:
            return x.reshape([d for d in x.shape if d != 1])
        for axis in sorted((a % x.dim() for a in axes), reverse=True):
            x = x.squeeze(axis)
        return x

    def _Concat(self, inputs, args, attrs):
        return torch.cat(args, dim=attrs["axis"])

    def _Split(self, inputs, args, attrs):
        x, axis, parts = args[0], attrs.get("axis", 0), attrs["outputs"]
        if len(inputs) > 1 and inputs[1]:
            sizes = self._ints(inputs[1])
        elif "split" in attrs:
            sizes = list(attrs["split"])
        else:  # equal parts; since opset 18 the last may be smaller
            chunk = -(-x.shape[axis] // attrs.get("num_outputs", parts))
            sizes = [min(chunk, x.shape[axis] - i * chunk) for i in range(parts)]
        return tuple(torch.split(x, sizes, dim=axis))

    def _Slice(self, inputs, args, attrs):
        x = args[0]
        starts, ends = self._ints(inputs[1]), self._ints(inputs[2])
        axes = self._ints(inputs[3]) if len(inputs) > 3 and inputs[3] else list(range(len(starts)))
        steps = self._ints(inputs[4]) if len(inputs) > 4 and inputs[4] else [1] * len(starts)
        if any(step < 1 for step in steps):
            raise ValueError(f"Slice node '{attrs['name']}' with a negative step is not taken")
        index = [slice(None)] * x.dim()
        for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
            index[axis % x.dim()] = slice(start, min(end, x.shape[axis]), step)
        return x[tuple(index)]

    def _Gather(self, inputs, args, attrs):
        x, indices = args
        axis = attrs.get("axis", 0) % x.dim()
        indices = torch.where(indices < 0, indices + x.shape[axis], indices).long()
        picked = torch.index_select(x, axis, indices.reshape(-1))
        return picked.reshape(*x.shape[:axis], *indices.shape, *x.shape[axis + 1:])

    def _GatherElements(self, inputs, args, attrs):
        x, indices = args
        axis = attrs.get("axis", 0) % x.dim()
        return torch.gather(x, axis, torch.where(indices < 0, indices + x.shape[axis], indices).long())

    def _Expand(self, inputs, args, attrs):
        return args[0].expand(torch.broadcast_shapes(tuple(args[0].shape), tuple(self._ints(inputs[1]))))

    def _Tile(self, inputs, args, attrs):
        return args[0].repeat(*self._ints(inputs[1]))

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

    # ------------------------------------------------------------------ resizing

    def _Resize(self, inputs, args, attrs):
        x, name = args[0], attrs["name"]
        mode = _text(attrs.get("mode", "nearest"))
        transform = _text(attrs.get("coordinate_transformation_mode", "half_pixel"))
        if attrs.get("antialias", 0) or attrs.get("axes") or _text(attrs.get("keep_aspect_ratio_policy",
                                                                              "stretch")) != "stretch":
            raise ValueError(f"Resize node '{name}' with antialias, axes or a kept aspect ratio is not taken")
        sizes = self._ints(inputs[3]) if len(inputs) > 3 and inputs[3] else []
        scales = [] if sizes else self._floats(inputs[2]) if len(inputs) > 2 and inputs[2] else []
        if sizes:
            scales = [out / size for out, size in zip(sizes, x.shape, strict=True)]
        else:
            sizes = [math.floor(size * scale) for size, scale in zip(x.shape, scales, strict=True)]
        if len(sizes) != x.dim() or list(sizes[:2]) != list(x.shape[:2]) or x.dim() not in (3, 4, 5):
            raise ValueError(f"Resize node '{name}' resizes other than the spatial axes of an N, C, ... tensor")
        if mode == "nearest":
            for axis in range(2, x.dim()):
                index = _nearest_source(x.shape[axis], sizes[axis], scales[axis], transform,
                                        _text(attrs.get("nearest_mode", "round_prefer_floor")), name)
                x = torch.index_select(x, axis, torch.from_numpy(index))
            return x
        if mode != "linear" or transform not in ("half_pixel", "pytorch_half_pixel", "align_corners"):
            raise ValueError(f"Resize node '{name}': mode {mode} with {transform} coordinates is not taken "
                             "(nearest, or linear with half_pixel, pytorch_half_pixel or align_corners)")
        interpolation = {3: "linear", 4: "bilinear", 5: "trilinear"}[x.dim()]
        if transform == "align_corners":
            return F.interpolate(x, size=sizes[2:], mode=interpolation, align_corners=True)
        return F.interpolate(x, scale_factor=scales[2:], mode=interpolation, align_corners=False,
                             recompute_scale_factor=False)


def _depthwise(x, weight, bias, strides, dilations):
    """A depthwise conv (padded input) as a sum of shifted, scaled copies: torch has no fast float64 kernel for
    grouped convs (it runs one slow conv per channel), and the reference of a VanillaNet runs many."""
    (sh, sw), (dh, dw), (kh, kw) = strides, dilations, weight.shape[2:]
    rows = (x.shape[2] - dh * (kh - 1) - 1) // sh + 1
    cols = (x.shape[3] - dw * (kw - 1) - 1) // sw + 1
    out = torch.zeros(x.shape[0], x.shape[1], rows, cols, dtype=x.dtype) if bias is None else \
        bias.view(1, -1, 1, 1).expand(x.shape[0], -1, rows, cols).clone()
    for i in range(kh):
        for j in range(kw):
            window = x[:, :, i * dh:i * dh + (rows - 1) * sh + 1:sh, j * dw:j * dw + (cols - 1) * sw + 1:sw]
            out = out + window * weight[:, 0, i, j].view(1, -1, 1, 1)
    return out


def _nearest_source(size, out, scale, transform, rounding, name):
    """For each output position along one axis, the input position ONNX's nearest Resize reads."""
    position = np.arange(out, dtype=np.float64)
    if transform == "half_pixel" or (transform == "pytorch_half_pixel" and out > 1):
        source = (position + 0.5) / scale - 0.5
    elif transform == "pytorch_half_pixel":
        source = np.zeros_like(position)
    elif transform == "asymmetric":
        source = position / scale
    elif transform == "align_corners":
        source = position * (size - 1) / (out - 1) if out > 1 else np.zeros_like(position)
    elif transform == "tf_half_pixel_for_nn":
        source = (position + 0.5) / scale
    else:
        raise ValueError(f"Resize node '{name}' with {transform} coordinates is not taken")
    rounded = {"round_prefer_floor": lambda v: np.ceil(v - 0.5), "round_prefer_ceil": lambda v: np.floor(v + 0.5),
               "floor": np.floor, "ceil": np.ceil}[rounding](source)
    return np.clip(rounded, 0, size - 1).astype(np.int64)


def _text(value):
    return value.decode() if isinstance(value, bytes) else value
