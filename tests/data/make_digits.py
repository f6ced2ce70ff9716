"""Regenerates tests/data/digits/: real handwritten digits and a VanillaNet trained on them.

scikit-learn ships the UCI handwritten digits (1,797 scans, 8x8, 17 grey levels). This script
upscales them to 32x32 RGB PNGs in ImageFolder layout (``heldout/``: 30 per class, never trained
on; ``calibration/``: 20 per class from the training split), then trains a narrow VanillaNet-5
(width 1/16, 10 classes, 64x64 input through vncompile's own evaluation preprocessing) with the
deep-training schedule run to completion (act_learn rising linearly to 1 over 20 of 30 epochs),
and saves it in the official training script's checkpoint layout (``vanillanet5_digits.pth``).

    pip install scikit-learn && python tests/data/make_digits.py
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vncompile.data.preprocess import Preprocessing
from vncompile.vanillanet.archs import ModelSpec
from vncompile.vanillanet.zoo import create_model, init_random_weights

OUT = Path(__file__).parent / "digits"
SIZE, EPOCHS, DECAY_EPOCHS, WIDTH = 64, 30, 20, 1 / 16
HELDOUT_PER_CLASS, CALIBRATION_PER_CLASS = 30, 20


def save_png(pixels: np.ndarray, path: Path) -> None:
    grey = Image.fromarray((pixels * (255 / 16)).astype(np.uint8)).resize((32, 32), Image.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    grey.convert("RGB").save(path, optimize=True)


def main() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(digits.target))
    heldout, train = [], []
    for i in order:
        label = int(digits.target[i])
        (heldout if sum(digits.target[j] == label for j in heldout) < HELDOUT_PER_CLASS else train).append(i)
    shutil.rmtree(OUT, ignore_errors=True)
    for i in heldout:
        save_png(digits.images[i], OUT / "heldout" / str(digits.target[i]) / f"{i:04d}.png")
    calibration = [i for label in range(10) for i in [j for j in train if digits.target[j] == label][
        :CALIBRATION_PER_CLASS]]
    for i in calibration:
        save_png(digits.images[i], OUT / "calibration" / str(digits.target[i]) / f"{i:04d}.png")
    scratch = OUT / ".train"
    for i in train:
        save_png(digits.images[i], scratch / f"{i:04d}.png")
    preprocessing = Preprocessing()  # exactly what --eval-data and --calibration apply
    x = torch.from_numpy(preprocessing.load_many([scratch / f"{i:04d}.png" for i in train], SIZE, SIZE))
    y = torch.from_numpy(digits.target[train].astype(np.int64))
    shutil.rmtree(scratch)

    torch.manual_seed(0)
    model = init_random_weights(create_model(ModelSpec("vanillanet_5", WIDTH, num_classes=10)), seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, EPOCHS)
    for epoch in range(EPOCHS):
        model.set_act_learn(min(1.0, epoch / DECAY_EPOCHS))  # the official loop's linear decay
        model.train()
        for batch in torch.randperm(len(y)).split(64):
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch], label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        schedule.step()
        print(f"epoch {epoch} act_learn {model.act_learn:.2f} loss {loss.item():.3f}")
    model.eval()
    args = argparse.Namespace(model="vanillanet_5", decay_epochs=DECAY_EPOCHS, decay_linear=True, epochs=EPOCHS,
                              input_size=SIZE, nb_classes=10)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}  # as saved under DDP
    torch.save({"model": state, "epoch": EPOCHS - 1, "args": args}, OUT / "vanillanet5_digits.pth")
    held = torch.from_numpy(preprocessing.load_many(sorted((OUT / "heldout").rglob("*.png")), SIZE, SIZE))
    labels = torch.tensor([int(p.parent.name) for p in sorted((OUT / "heldout").rglob("*.png"))])
    with torch.no_grad():
        accuracy = (model(held).argmax(1) == labels).float().mean().item()
    print(f"held-out top-1 {100 * accuracy:.2f}% on {len(labels)} images")


if __name__ == "__main__":
    main()
