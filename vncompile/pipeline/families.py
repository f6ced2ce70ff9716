"""Model families: what the pipeline needs to know about a kind of network, in one place per kind.

A family says which input sizes it accepts (from architecture data, before any weights are read),
what its outputs are, whether ``--act-learn`` and ``--fit-memory`` apply to it, and how accuracy is
judged. The pipeline asks the family and never branches on the kind of network itself.

- ``VanillaNetClassifier``: a VanillaNet with its classifier head: one output, ``logits``, judged
  by top-1; the act_learn leaky ReLU; its high-resolution stages tile (``vanillanet.tiling``).
- ``VanillaNetBackbone``: the same network headless, its outputs the selected feature maps; input
  sides must divide by the deepest output's stride.
- ``ResNetBaseline``: the ResNet-50 / plain-CNN-50 baselines of the paper's Table 1 (classifier or
  backbone): no act_learn, no tiling.
- ``ExternalGraph``: an ONNX file from any exporter (``graph_family``): a classifier (one ``[N, classes]``
  output), a detector (a YOLOv8/YOLO11 Detect output ``[N, 4 + classes, anchors]``, or NMS rows ``[N, K, 6]``),
  or any other graph, verified output by output. Its sizes come from the graph: a fixed-size graph builds at
  its own size only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..api.request import InputShape
from ..core.errors import InputError
from ..data.detection import DetectorMetadata, ultralytics_metadata
from ..onnxtools.graph_file import GraphFile
from ..vanillanet.archs import ModelSpec, has_adaptive_pooling, min_input_size
from ..vanillanet.features import FeatureMap


@dataclass(frozen=True)
class ModelFamily:
    name: str
    classifier: bool  # one output, logits: accuracy is top-1 on labelled images; else feature maps, output by output
    learns_activation: bool = False  # the act_learn leaky ReLU between the 1x1 convs (``--act-learn``)
    series_activation: bool = False  # the series activation, its depthwise kernel 2n+1 (``--act-num``)
    tiles: bool = False  # ``--fit-memory`` can tile the high-resolution stages into strips
    detector: str | None = None  # how its outputs decode into boxes: "yolo" (Detect head), "nms" (NMS rows), None
    preprocess: str = "center-crop"  # real images' default preprocessing: "center-crop" (ImageNet) or "letterbox"

    def output_names(self, features: tuple[FeatureMap, ...]) -> list[str]:
        """A backbone's outputs say what they are (``stage8_s16``: stage 8's map, 1/16 of the input); else logits."""
        return [m.name for m in features] if not self.classifier else ["logits"]

    def check_input(self, spec: ModelSpec, shape: InputShape, dynamic: bool, memory_bytes: int | None,
                    features: tuple[FeatureMap, ...] = ()) -> None:
        """Refuse sizes the network cannot take, or that would exhaust this machine: architecture data only."""
        if features and not has_adaptive_pooling(spec):
            # A detector's neck adds each map to the 2x upsampled deeper one: every side must divide by the
            # deepest stride, or pooling drops border rows and the maps' sizes disagree (mmdetection pads to 32).
            multiple = math.lcm(*(m.stride for m in features))
            if shape.height % multiple or shape.width % multiple:
                padded = "x".join(str(-(-side // multiple) * multiple) for side in (shape.height, shape.width))
                strides = ", ".join(str(m.stride) for m in features)
                raise InputError(f"outputs at strides {strides} need input sides that are multiples of {multiple}, "
                                 f"got {shape.height}x{shape.width}: pooling would drop border rows and the maps "
                                 f"would not line up; pad to {padded} as mmdetection does (Pad size_divisor=32)")
        smallest = min_input_size(spec)
        if min(shape.height, shape.width) < smallest:
            raise InputError(f"{spec.label} needs inputs of at least {smallest}x{smallest} "
                             f"(its pooling strides), got {shape.height}x{shape.width}")
        if shape.channels != 3:
            raise InputError(f"{spec.label} takes 3 input channels, got {shape.channels}")
        if dynamic and has_adaptive_pooling(spec):
            raise InputError(
                f"{spec.name} cannot export with dynamic H/W: its adaptive max pools (to 38/19/10) have windows that "
                "depend on the input size and ONNX has no adaptive pooling; export a static size (native: 224, any "
                "fixed size works)")
        if memory_bytes:
            needed = self.activation_bytes_estimate(spec, shape)
            if needed > memory_bytes // 2:
                raise InputError(
                    f"input {shape.label} is too large for this machine: {spec.label} would need about "
                    f"{needed / 2**30:.1f} GiB for its largest feature maps, over half of the "
                    f"{memory_bytes / 2**30:.0f} GiB here")

    def largest_map(self, spec: ModelSpec) -> tuple[int, int]:
        """Channels and stride of the widest full-resolution map."""
        raise NotImplementedError

    def activation_bytes_estimate(self, spec: ModelSpec, shape: InputShape) -> int:
        """float64 reference input + output of the widest full-resolution layer, times a margin (verification runs
        the float64 training form, so 8 bytes)."""
        channels, stride = self.largest_map(spec)
        pixels = (shape.height // stride + 1) * (shape.width // stride + 1)
        return 3 * 8 * shape.batch * channels * pixels


@dataclass(frozen=True)
class VanillaNetFamily(ModelFamily):
    learns_activation: bool = True
    series_activation: bool = True
    tiles: bool = True

    def largest_map(self, spec: ModelSpec) -> tuple[int, int]:
        arch = spec.arch()  # a VanillaNet's largest map is its first stage's output at 1/4 resolution
        return max(arch.dims[:2]), arch.stem_stride  # type: ignore[union-attr]


@dataclass(frozen=True)
class ResNetFamily(ModelFamily):
    def largest_map(self, spec: ModelSpec) -> tuple[int, int]:
        return spec.arch().base_width * 4, 4  # type: ignore[union-attr]  # the 4*base-width map at 1/4


VANILLANET_CLASSIFIER = VanillaNetFamily("vanillanet classifier", classifier=True)
VANILLANET_BACKBONE = VanillaNetFamily("vanillanet backbone", classifier=False)
RESNET_CLASSIFIER = ResNetFamily("resnet baseline", classifier=True)
RESNET_BACKBONE = ResNetFamily("resnet baseline backbone", classifier=False)


def family_of(spec: ModelSpec, features: tuple[FeatureMap, ...] | list[FeatureMap]) -> ModelFamily:
    """The one place that tells the kinds of network apart."""
    if spec.is_vanillanet:
        return VANILLANET_BACKBONE if features else VANILLANET_CLASSIFIER
    return RESNET_BACKBONE if features else RESNET_CLASSIFIER


@dataclass(frozen=True)
class ExternalGraphFamily(ModelFamily):
    """A graph vncompile did not export: everything it knows comes from the graph itself."""

    metadata: DetectorMetadata = DetectorMetadata()
    classes: int | None = None  # a classifier's or a detector's classes, where the graph says

    def check_graph_input(self, graph: GraphFile, shape: InputShape, dynamic: bool) -> None:
        """A fixed-size graph builds at its own size only; a detector's sides are multiples of its deepest stride;
        channels as declared; --dynamic needs dynamic dims."""
        fixed = graph.fixed_size
        if fixed is not None and (shape.height, shape.width) != fixed:
            raise InputError(
                f"{graph.path.name} has a fixed input size {fixed[0]}x{fixed[1]} (its reshapes and head were traced "
                f"at it), so it cannot build at {shape.height}x{shape.width}; drop --size/--sizes, or re-export it "
                "with dynamic height and width (Ultralytics: yolo export ... dynamic=True; torch.onnx.export: "
                "dynamic_axes / dynamic_shapes)")
        stride = self.metadata.stride or 32  # Ultralytics' default: the deepest level of P3-P5
        if fixed is None and self.detector and (shape.height % stride or shape.width % stride):
            padded = "x".join(str(-(-side // stride) * stride) for side in (shape.height, shape.width))
            raise InputError(f"{graph.path.name} is a detector with stride {stride}: input sides must be multiples of "
                             f"{stride} (its levels' maps would not line up), got {shape.height}x{shape.width}; use "
                             f"{padded}")
        if graph.channels is not None and graph.channels != shape.channels:
            raise InputError(f"{graph.path.name} takes {graph.channels} input channels, not {shape.channels}")
        batch = graph.input_dims[0]
        if isinstance(batch, int) and batch != shape.batch:
            raise InputError(f"{graph.path.name} has a fixed batch of {batch}, not {shape.batch}; drop --batch or "
                             "re-export with a dynamic batch")
        if dynamic and fixed is not None:
            raise InputError(f"--dynamic needs a graph with dynamic height and width; {graph.path.name} is fixed at "
                             f"{fixed[0]}x{fixed[1]}")

    def output_names(self, features=()) -> list[str]:
        raise NotImplementedError("an external graph's outputs are its own (GraphFile.output_names)")


def _detector_kind(graph: GraphFile, metadata: DetectorMetadata) -> str | None:
    """"yolo" for a Detect output [N, 4 + classes, anchors] (as many classes as the metadata names, or any number
    in a graph whose metadata says it detects), "nms" for an Ultralytics detector's NMS rows [N, K, 6]
    (x1, y1, x2, y2, score, class); None otherwise (its outputs are verified one by one)."""
    if len(graph.outputs) != 1 or len(graph.outputs[0][1]) != 3:
        return None
    channels, last = graph.outputs[0][1][1:]
    if metadata.names is not None and channels == 4 + len(metadata.names):
        return "yolo"
    if metadata.task != "detect":
        return None
    if last == 6:
        return "nms"
    return "yolo" if isinstance(channels, int) and channels > 4 else None


def graph_family(graph: GraphFile) -> ExternalGraphFamily:
    """What an ONNX file is, from its outputs and Ultralytics' metadata when it has some."""
    metadata = ultralytics_metadata(graph.metadata)
    kind = _detector_kind(graph, metadata)
    last = graph.outputs[0][1]
    if kind is not None:
        channels = last[1] if kind == "yolo" and isinstance(last[1], int) else None
        classes = len(metadata.names) if metadata.names else None if channels is None else channels - 4
        return ExternalGraphFamily("external detector", classifier=False, detector=kind, preprocess="letterbox",
                                   metadata=metadata, classes=classes)
    classifier = len(graph.outputs) == 1 and len(last) == 2
    return ExternalGraphFamily("external classifier" if classifier else "external graph", classifier=classifier,
                               metadata=metadata,
                               classes=last[-1] if classifier and isinstance(last[-1], int) else None)
