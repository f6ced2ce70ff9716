"""Regenerates tests/data/detector/: a synthetic detection set and a small detector with a VanillaNet backbone in
training form, exported to ONNX as a detector exporter leaves it.

The set: rectangles, ellipses and triangles (3 classes) in random colours on varied backgrounds (gradients,
low-frequency noise, stripes), images of 96-192 pixels a side, labelled in the YOLO layout. ``val/`` (48
images, JPEG) is written; the training images (512, drawn from another seed) are not kept.

The detector, written here: vncompile's VanillaNet-5 in training form (width 1/16, act_learn rising to 1 over
the first 60% of training, VanillaNet's deep-training schedule) as the backbone (strides 8, 16, 32), a
top-down neck (1x1 laterals, nearest upsampling, 3x3 conv-BN-ReLU), and an anchor-free head per level with
a box branch (4 x 8 distribution bins per side, as DFL) and a class branch. Training assigns each object
to the anchor points inside it near its centre (at the levels whose range covers its size) and minimizes
BCE on the class scores, IoU loss and the bins' cross-entropy on the boxes. In eval mode the network
decodes as YOLOv8/YOLO11 export: ``[1, 4 + 3, A]``, cx, cy, w, h in input pixels then sigmoid scores.

It is exported at 128x128 with torch.onnx in eval mode, as is (torch's exporter folds BN into the convs; the
two 1x1 convs of each block and the LeakyRelu(1.0) between them stay: the training form), with
Ultralytics-style metadata (task, names, imgsz, stride), as ``detector_train_form.onnx``. The script ends by
measuring it: mAP on val (ONNX Runtime, letterboxed as Ultralytics validates), deploy fusion, and the float64
rebuild's agreement.

``Detector`` also takes another backbone (``vanillanet_5`` at any width, or ``resnet50``: C3-C5), input size and
neck width, and ``export`` writes any of them the same way: ``benchmarks/detectors.py`` exports full-width
detectors, untrained, at 640 and 1280 for its memory and latency tables.

    python tests/data/make_detector.py        # a few CPU minutes
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from vncompile.data.detection import Letterbox, coco_map, decode_yolo, read_yolo_set
from vncompile.vanillanet.archs import ModelSpec
from vncompile.vanillanet.zoo import create_model

OUT = Path(__file__).parent / "detector"
NAMES = ("rectangle", "ellipse", "triangle")
SIZE, BINS, WIDTH, NECK = 128, 8, 1 / 16, 32
STRIDES = (8, 16, 32)
# The objects each level learns, by the largest distance from an anchor point to the box's sides (pixels).
LEVEL_RANGES = ((0, 40), (28, 80), (56, 1e9))


# ---------------------------------------------------------------------------------------------- the set


def background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    kind = rng.integers(3)
    if kind == 0:  # a gradient between two colours
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = np.linspace(0, 1, width)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, height)[:, None, None]
        pixels = np.broadcast_to(a + (b - a) * t, (height, width, 3))
    elif kind == 1:  # low-frequency noise
        coarse = Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8))
        pixels = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.float64)
    else:  # stripes
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        period = rng.integers(6, 24)
        stripes = ((np.arange(width)[None, :] + np.arange(height)[:, None]) // period) % 2
        pixels = np.where(stripes[..., None] == 1, a, b)
    noise = rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))


def draw_image(rng: np.random.Generator) -> tuple[Image.Image, list[tuple[int, float, float, float, float]]]:
    width, height = (int(v) for v in rng.integers(96, 193, 2))
    image = background(rng, width, height)
    canvas = ImageDraw.Draw(image)
    objects = []
    for _ in range(rng.integers(1, 5)):
        cls = int(rng.integers(len(NAMES)))
        side = min(width, height)
        w, h = (float(v) for v in rng.uniform(0.15, 0.6, 2) * side)
        x1, y1 = float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        box = [x1, y1, x1 + w, y1 + h]
        if cls == 0:
            canvas.rectangle(box, fill=colour, outline=(0, 0, 0))
        elif cls == 1:
            canvas.ellipse(box, fill=colour, outline=(0, 0, 0))
        else:
            canvas.polygon([(x1, y1 + h), (x1 + w, y1 + h), (x1 + w / 2, y1)], fill=colour, outline=(0, 0, 0))
        objects.append((cls, (x1 + w / 2) / width, (y1 + h / 2) / height, w / width, h / height))
    return image, objects


def write_set(root: Path, count: int, seed: int, image_format: str = "jpg") -> None:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(count):
        image, objects = draw_image(rng)
        image.save(root / "images" / f"{i:04d}.{image_format}", quality=90)
        (root / "labels" / f"{i:04d}.txt").write_text("".join(f"{c} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n"
                                                              for c, cx, cy, w, h in objects))
    (root / "data.yaml").write_text("names:\n" + "".join(f"  {i}: {n}\n" for i, n in enumerate(NAMES)))


# ---------------------------------------------------------------------------------------------- the detector


def conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


# Each backbone's maps at strides 8, 16, 32 (its out_indices): VanillaNet-5's three stages, ResNet-50's C3-C5.
BACKBONE_OUTPUTS = {"vanillanet_5": (1, 2, 3), "resnet50": (2, 3, 4)}
DESCRIPTION = "vncompile test detector: VanillaNet-5 (1/16 width, training form) + neck + anchor-free head"


def make_backbone(name: str, width: float) -> tuple[nn.Module, list[int]]:
    """The backbone in training form and its three maps' channels."""
    backbone = create_model(ModelSpec(name, width=width, num_classes=0, form="train"),
                            out_indices=BACKBONE_OUTPUTS[name])
    with torch.no_grad():  # the channels, whatever the family: a small probe (it draws no random numbers)
        dims = [f.shape[1] for f in backbone(torch.zeros(1, 3, 64, 64))]
    return backbone, dims


def anchor_points(size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Every level's cell centres in grid units, (2, A), and each one's stride, (A,)."""
    points, strides = [], []
    for stride in STRIDES:
        cells = size // stride
        ys, xs = torch.meshgrid(torch.arange(cells) + 0.5, torch.arange(cells) + 0.5, indexing="ij")
        points.append(torch.stack([xs.flatten(), ys.flatten()]))
        strides.append(torch.full((cells * cells,), float(stride)))
    return torch.cat(points, 1), torch.cat(strides)


class Detector(nn.Module):
    """The defaults are the committed test detector; the anchor points are buffers for one input ``size``."""

    def __init__(self, classes: int = len(NAMES), *, backbone: str = "vanillanet_5", width: float = WIDTH,
                 size: int = SIZE, neck: int = NECK) -> None:
        super().__init__()
        self.classes, self.size = classes, size
        self.backbone, dims = make_backbone(backbone, width)
        self.laterals = nn.ModuleList(nn.Conv2d(d, neck, 1) for d in dims)
        self.smooth = nn.ModuleList(conv_bn_relu(neck, neck) for _ in dims)
        self.box = nn.ModuleList(nn.Sequential(conv_bn_relu(neck, neck), nn.Conv2d(neck, 4 * BINS, 1)) for _ in dims)
        self.cls = nn.ModuleList(nn.Sequential(conv_bn_relu(neck, neck), nn.Conv2d(neck, classes, 1)) for _ in dims)
        for branch in self.cls:  # a low prior on every class, as detectors start
            nn.init.constant_(branch[-1].bias, -4.0)
        self.bins = nn.Conv2d(BINS, 1, 1, bias=False)  # the expectation over the bins, as a fixed conv
        self.bins.weight.data[:] = torch.arange(BINS, dtype=torch.float32).view(1, BINS, 1, 1)
        self.bins.requires_grad_(False)
        points, strides = anchor_points(size)
        self.register_buffer("points", points[None])
        self.register_buffer("strides", strides[None, None])

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Box bins (B, 4 x BINS, A) and class logits (B, classes, A) over every level's anchor points."""
        features = [lateral(f) for lateral, f in zip(self.laterals, self.backbone(x), strict=True)]
        for i in (1, 0):  # top-down
            features[i] = features[i] + F.interpolate(features[i + 1], scale_factor=2.0, mode="nearest")
        features = [smooth(f) for smooth, f in zip(self.smooth, features, strict=True)]
        box = torch.cat([b(f).flatten(2) for b, f in zip(self.box, features, strict=True)], 2)
        cls = torch.cat([c(f).flatten(2) for c, f in zip(self.cls, features, strict=True)], 2)
        return box, cls

    def distances(self, box: torch.Tensor) -> torch.Tensor:
        """(B, 4, A): left, top, right, bottom in strides, the expectation of each side's bins."""
        b, _, a = box.shape
        probabilities = box.view(b, 4, BINS, a).transpose(1, 2).softmax(1)  # (B, BINS, 4, A)
        return self.bins(probabilities).view(b, 4, a)

    def boxes(self, distances: torch.Tensor) -> torch.Tensor:
        """(B, 4, A) x1, y1, x2, y2 in input pixels."""
        return torch.cat([self.points - distances[:, :2], self.points + distances[:, 2:]], 1) * self.strides

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        box, cls = self.raw(x)
        distances = self.distances(box)
        top_left, bottom_right = self.points - distances[:, :2], self.points + distances[:, 2:]
        xywh = torch.cat([(top_left + bottom_right) / 2, bottom_right - top_left], 1) * self.strides
        return torch.cat([xywh, cls.sigmoid()], 1)


# ---------------------------------------------------------------------------------------------- training


def assign(targets: list[torch.Tensor], points: torch.Tensor, strides: torch.Tensor):
    """For each image: per anchor point the object it learns (-1: background). A point learns an object whose
    box contains it, within 2.5 strides of its centre, at a level whose range covers its extent; of several,
    the smallest."""
    centres = points * strides  # (2, A) pixels
    low = torch.tensor([r[0] for r in LEVEL_RANGES])[torch.tensor([STRIDES.index(int(s)) for s in strides])]
    high = torch.tensor([r[1] for r in LEVEL_RANGES])[torch.tensor([STRIDES.index(int(s)) for s in strides])]
    assigned = []
    for boxes in targets:  # (n, 5): class, x1, y1, x2, y2
        if not len(boxes):
            assigned.append(torch.full((points.shape[1],), -1, dtype=torch.long))
            continue
        x, y = centres[0][None], centres[1][None]  # (1, A)
        x1, y1, x2, y2 = (boxes[:, i, None] for i in range(1, 5))
        sides = torch.stack([x - x1, y - y1, x2 - x, y2 - y])  # (4, n, A)
        inside = sides.min(0).values > 0
        near = (torch.abs(x - (x1 + x2) / 2) < 2.5 * strides) & (torch.abs(y - (y1 + y2) / 2) < 2.5 * strides)
        extent = sides.max(0).values
        fits = (extent >= low) & (extent <= high) & (extent / strides < BINS - 1)
        area = ((x2 - x1) * (y2 - y1)).expand_as(extent).clone()
        area[~(inside & near & fits)] = math.inf
        best, index = area.min(0)
        assigned.append(torch.where(torch.isfinite(best), index, torch.full_like(index, -1)))
    return assigned


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of matching x1, y1, x2, y2 rows."""
    w = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    h = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = w * h
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return inter / union.clamp(min=1e-6)


def loss(model: Detector, images: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
    box, cls = model.raw(images)
    distances = model.distances(box)
    predicted = model.boxes(distances)  # (B, 4, A)
    points, strides = model.points[0], model.strides[0, 0]
    class_target = torch.zeros_like(cls)
    box_losses, bin_losses, positives = [], [], 0
    for i, (objects, index) in enumerate(zip(targets, assign(targets, points, strides), strict=True)):
        chosen = torch.nonzero(index >= 0).flatten()
        if not len(chosen):
            continue
        matched = objects[index[chosen]]
        class_target[i, matched[:, 0].long(), chosen] = 1.0
        truth = matched[:, 1:]
        box_losses.append(1 - iou(predicted[i, :, chosen].T, truth))
        centre = points[:, chosen] * strides[chosen]
        sides = torch.stack([centre[0] - truth[:, 0], centre[1] - truth[:, 1], truth[:, 2] - centre[0],
                             truth[:, 3] - centre[1]], 1) / strides[chosen, None]  # (n, 4) in strides
        sides = sides.clamp(0, BINS - 1.01)
        logits = box[i].view(4, BINS, -1)[:, :, chosen].permute(2, 0, 1)  # (n, 4, BINS)
        left = sides.floor().long()
        weight = sides - left
        log_p = logits.log_softmax(-1)
        bin_losses.append(-(log_p.gather(-1, left[..., None])[..., 0] * (1 - weight)
                            + log_p.gather(-1, (left + 1)[..., None])[..., 0] * weight).mean(1))
        positives += len(chosen)
    positives = max(positives, 1)
    class_loss = F.binary_cross_entropy_with_logits(cls, class_target, reduction="sum") / positives
    if not box_losses:
        return class_loss
    return class_loss + 2.0 * torch.cat(box_losses).sum() / positives + 0.5 * torch.cat(bin_losses).sum() / positives


def load_training_set(root: Path) -> tuple[torch.Tensor, list[torch.Tensor]]:
    dataset = read_yolo_set(root, num_classes=len(NAMES))
    images, targets = [], []
    for path, boxes, classes in zip(dataset.paths, dataset.boxes, dataset.classes, strict=True):
        array, geometry = Letterbox().load_with_geometry(path, SIZE, SIZE)
        scaled = boxes * np.array(geometry.scale * 2) + np.array(geometry.pad * 2)
        images.append(torch.from_numpy(array))
        targets.append(torch.from_numpy(np.concatenate([classes[:, None], scaled], 1)).float())
    return torch.stack(images), targets


def train(model: Detector, images: torch.Tensor, targets: list[torch.Tensor], epochs: int, batch: int) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3, weight_decay=1e-4)
    steps = epochs * math.ceil(len(images) / batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(0)
    start = time.time()
    for epoch in range(epochs):
        model.backbone.set_act_learn(min(1.0, epoch / (0.6 * epochs)))  # deep training: to 1, then stays
        model.train()
        total = 0.0
        for chunk in torch.randperm(len(images), generator=generator).split(batch):
            x, chosen = images[chunk].clone(), [targets[i].clone() for i in chunk]
            flip = torch.rand(len(chunk), generator=generator) < 0.5
            x[flip] = x[flip].flip(-1)
            for j in torch.nonzero(flip).flatten().tolist():
                chosen[j][:, [1, 3]] = SIZE - chosen[j][:, [3, 1]]
            value = loss(model, x, chosen)
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            schedule.step()
            total += float(value.detach()) * len(chunk)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(images):.3f}, act_learn "
              f"{model.backbone.act_learn:g}, {time.time() - start:.0f} s", flush=True)
    model.backbone.set_act_learn(1.0)
    model.eval()


# ---------------------------------------------------------------------------------------------- export, measure


def export(model: Detector, path: Path, description: str = DESCRIPTION) -> None:
    """At the model's own size (a fixed-size graph), with the metadata Ultralytics' exporter writes."""
    import onnx

    from vncompile.api.request import InputShape
    from vncompile.onnxtools.export import export_onnx

    export_onnx(model.eval(), InputShape.square(model.size), path, label="detector", output_names=["output0"],
                opset=18, dynamic=False)
    graph = onnx.load(str(path))
    metadata = {"description": description, "task": "detect", "stride": str(max(STRIDES)),
                "imgsz": str([model.size, model.size]), "names": str(dict(enumerate(NAMES)))}
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))


def measure(path: Path, val: Path) -> None:
    import onnx
    import onnxruntime as ort

    from vncompile.onnxtools.deploy_fusion import fuse_for_deploy
    from vncompile.toolchains.workers.onnx_as_torch import OnnxAsTorch

    dataset = read_yolo_set(val, num_classes=len(NAMES))
    loaded = [Letterbox().load_with_geometry(p, SIZE, SIZE) for p in dataset.paths]
    inputs = np.stack([array for array, _ in loaded])
    exported = onnx.load(str(path))
    fused = onnx.load(str(path))
    report = fuse_for_deploy(fused)
    print(report.summary())
    outputs = {}
    for name, graph in (("exported", exported), ("fused", fused)):
        session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        outputs[name] = np.concatenate([session.run(None, {"input": x[None]})[0] for x in inputs])
        found = [decode_yolo(o[None])[0].to_original(g) for o, (_, g) in zip(outputs[name], loaded, strict=True)]
        print(f"{name}: mAP50-95 / mAP50 on val ({len(inputs)} images): {coco_map(dataset, found)}")
    rebuilt = OnnxAsTorch(exported, dtype=torch.float64)
    with torch.no_grad():  # the graph's batch is 1
        reference = np.concatenate([rebuilt(torch.from_numpy(x[None])).numpy() for x in inputs])
    for name, output in outputs.items():
        print(f"{name} vs the float64 rebuild: max rel error "
              f"{np.abs(output - reference).max() / np.abs(reference).max():.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--train-images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--measure-only", action="store_true", help="measure the committed detector")
    args = parser.parse_args()
    onnx_path = OUT / "detector_train_form.onnx"
    if not args.measure_only:
        torch.manual_seed(0)
        shutil.rmtree(OUT, ignore_errors=True)
        write_set(OUT / "val", 48, seed=1)
        with tempfile.TemporaryDirectory() as scratch:
            write_set(Path(scratch) / "train", args.train_images, seed=2, image_format="png")
            images, targets = load_training_set(Path(scratch) / "train")
        model = Detector()
        train(model, images, targets, args.epochs, args.batch)
        export(model, onnx_path)
    measure(onnx_path, OUT / "val")


if __name__ == "__main__":
    main()
