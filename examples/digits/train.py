"""Train DigitsNet on sklearn's digits and write the example's files:

  examples/digits/digits.pt              state_dict checkpoint
  calibration_data/digits_val.npz        held-out validation set (images, labels)
  calibration_data/digits_calib.npz      a separate calibration set (images)

Run from the repository root: python -m examples.digits.train
Deterministic (fixed seeds, one thread); takes a few seconds on a CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from examples.digits.model import DigitsNet


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("examples/digits/digits.pt"))
    ap.add_argument("--data-dir", type=Path, default=Path("calibration_data"))
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(1)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = y.astype(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, random_state=0, stratify=y)
    x_calib, x_val, _, y_val = train_test_split(x_rest, y_rest, test_size=0.5, random_state=0, stratify=y_rest)

    model = DigitsNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _ in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(torch.from_numpy(x_val)).argmax(1).numpy() == y_val).mean() * 100
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    np.savez(args.data_dir / "digits_val.npz", images=x_val, labels=y_val)
    np.savez(args.data_dir / "digits_calib.npz", images=x_calib)
    print(f"held-out accuracy {acc:.2f}% on {len(y_val)} samples; wrote {args.out}")


if __name__ == "__main__":
    main()
