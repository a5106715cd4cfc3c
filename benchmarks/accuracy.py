"""Do the quantizers learn? fp32 vs quantized accuracy of a small convnet on scikit-learn's
bundled digits (8x8 images, 10 classes; nothing is downloaded).

    python benchmarks/accuracy.py                       # every scheme, post-training and after QAT
    python benchmarks/accuracy.py --schemes fatnn,ternary --qat-epochs 20 --first-last float,int8

For each scheme and each treatment of the first and last layer (``quantize(...,
first_last=...)``: ``float``, ``int8`` or ``same``, the scheme itself): post-training
``quantize`` of the trained float model, then quantization-aware fine-tuning
(straight-through estimators), then the same model built with ``tvm_ternary.build`` and
run by the Relax VM. The TVM predictions must equal PyTorch's: the script checks it. Not
a timed benchmark; accuracy varies a little with ``--seed``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import tvm
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from tqdm import tqdm
from tvm import relax

import tvm_ternary


def convnet() -> nn.Module:
    """Three conv-BN-ReLU layers (the middle ones get quantized) and a linear classifier."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 10))


def data(seed: int):
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(digits.target)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    return xtr, ytr, xte, yte


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, desc: str) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    model.train()
    for _ in tqdm(range(epochs), desc=desc, leave=False):
        for batch in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
        sched.step()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, np.ndarray]:
    with torch.no_grad():
        predicted = model.eval()(x).argmax(1)
    return float((predicted == y).float().mean()), predicted.numpy()


def tvm_predictions(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    ex = tvm_ternary.build(tvm_ternary.from_torch(model, x), "host")
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy())).numpy()
    return out.argmax(1)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--schemes", default=",".join(s for s in tvm_ternary.QUANTIZE_SCHEMES
                                                 if s not in tvm_ternary.quant.LINEAR_ONLY_SCHEMES))
    p.add_argument("--epochs", type=int, default=30, help="float training epochs")
    p.add_argument("--qat-epochs", type=int, default=15, help="quantization-aware fine-tuning epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--first-last", default=",".join(tvm_ternary.quant.FIRST_LAST),
                   help="comma list of quantize(first_last=...) choices to compare")
    args = p.parse_args(argv)
    choices = args.first_last.split(",")
    unknown = sorted(set(choices) - set(tvm_ternary.quant.FIRST_LAST))
    if unknown:
        p.error(f"unknown --first-last {unknown}; expected some of {tvm_ternary.quant.FIRST_LAST}")
    torch.manual_seed(args.seed)
    xtr, ytr, xte, yte = data(args.seed)
    model = train(convnet(), xtr, ytr, args.epochs, 3e-3, "fp32")
    fp32, _ = accuracy(model, xte, yte)
    print(f"digits: {len(xtr)} train / {len(xte)} test images; convnet fp32 test accuracy {fp32:.2%}")
    print(f"{'scheme':<10} {'first/last':>10} {'post-training':>14} {'after QAT':>10} {'TVM = PyTorch':>14}")
    for scheme in args.schemes.split(","):
        for first_last in choices:
            torch.manual_seed(args.seed)             # the same QAT batches for every choice
            quantized = tvm_ternary.quantize(model, scheme, xtr[:256], first_last=first_last)
            ptq, _ = accuracy(quantized, xte, yte)
            quantized = train(quantized, xtr, ytr, args.qat_epochs, 1e-3, f"QAT {scheme} {first_last}")
            qat, predicted = accuracy(quantized, xte, yte)
            same = np.array_equal(tvm_predictions(quantized, xte), predicted)
            print(f"{scheme:<10} {first_last:>10} {ptq:>14.2%} {qat:>10.2%} {'yes' if same else 'NO':>14}")
            if not same:
                raise SystemExit(f"accuracy.py: TVM and PyTorch predictions differ for {scheme}, first_last={first_last}")


if __name__ == "__main__":
    main()
