"""The demo's figures: trend curves over alpha and 2-D decision-boundary slices (Agg)."""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from ..convert import ensemble_predict


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def trend_curves(result: dict, path: str) -> str:
    """Clean accuracy and attack success (100 - accuracy under attack) over alpha.

    ``result``: the demo's ``results.json`` content.  alpha = 0 is the control (the teacher
    fine-tuned with the students' recipe at alpha 0); the teacher is the grey line.  Lines are
    the mean over training seeds, bands +- one std over seeds.
    """
    from .zoo import NOISE_OFF, WORST

    plt = _pyplot()
    summ = result["summary"]
    k = result["settings"]["draws"]
    alphas = [0.0] + list(result["settings"]["alphas"])
    control = "teacher fine-tuned a=0 (control)"
    on = [control] + [f"student a={a:g}" for a in alphas[1:]]
    off = [control] + [f"student a={a:g}{NOISE_OFF}" for a in alphas[1:]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11.5, 4.4))
    panels = (
        (ax1, False, [("noise on, per-draw mean", on, "clean", "mean", "o-"),
                      (f"noise on, correct on all {k} draws", on, "clean", "all_draws", "s-"),
                      ("noise on, ensemble", on, "clean", "ensemble", "^:"),
                      ("same weights, noise off", off, "clean", "mean", "D--")]),
        (ax2, True, [("PGD, noise on", on, "PGD", "mean", "x:"),
                     ("EOT-PGD, noise on", on, "EOT-PGD", "mean", "+:"),
                     ("worst case, noise on, per-draw mean", on, WORST, "mean", "o-"),
                     (f"worst case, noise on, fooled on any of {k} draws", on, WORST,
                      "all_draws", "s-"),
                     ("worst case, same weights, noise off", off, WORST, "mean", "D--")]),
    )
    for ax, success, lines in panels:
        for label, rows, col, metric, style in lines:
            mean = torch.tensor([summ[r][col][metric]["mean"] for r in rows]) * 100
            std = torch.tensor([summ[r][col][metric]["std"] for r in rows]) * 100
            if success:
                mean = 100 - mean
            line, = ax.plot(alphas, mean, style, label=label, linewidth=1.4, markersize=5)
            ax.fill_between(alphas, mean - std, mean + std, color=line.get_color(), alpha=0.15)
        col = WORST if success else "clean"
        teacher = 100 * summ["teacher"][col]["mean"]["mean"]
        ax.axhline(100 - teacher if success else teacher, color="grey", linestyle="--",
                   linewidth=1, label="teacher")
        ax.set_xlabel("alpha (degree of stochasticity; 0 = control fine-tuned without noise)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax1.set_ylabel("clean accuracy (%)")
    ax2.set_ylabel("attack success (%) = 100 - accuracy under attack")
    ax1.set_title("clean accuracy", fontsize=9)
    ax2.set_title(f"white-box L-inf attacks, eps {result['settings']['eps']:g}", fontsize=9)
    fig.suptitle(f"teacher-initialised students, {result['eval_size']} test images, "
                 f"{len(result['seeds'])} training seeds (bands: +- one std over seeds)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def slice_directions(teacher: nn.Module, x0: Tensor, y0: Tensor, seed: int):
    """Unit L2 directions through ``x0``: the teacher's loss gradient, and a random one
    orthogonal to it (Gram-Schmidt)."""
    x = x0[None].clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(teacher(x), y0[None])
    (g,) = torch.autograd.grad(loss, x)
    d1 = g[0] / g.norm()
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(x0.shape, generator=gen).to(x0.device, x0.dtype)
    r = r - (r * d1).sum() * d1
    return d1, r / r.norm()


@torch.no_grad()
def slice_labels(model: nn.Module, x0: Tensor, d1: Tensor, d2: Tensor, radius: float,
                 grid: int, samples: int = 1, batch_size: int = 1024) -> Tensor:
    """Predicted class on the plane ``x0 + a * d1 + b * d2``, ``a, b`` in ``[-radius, radius]``.

    ``samples == 1``: one stochastic pass per point; more: ``ensemble_predict``.  The plane is
    not clipped to ``[0, 1]``: it is a geometric slice of the input space.
    """
    ticks = torch.linspace(-radius, radius, grid, device=x0.device)
    b, a = torch.meshgrid(ticks, ticks, indexing="ij")
    pts = x0[None] + a.reshape(-1, 1, 1, 1) * d1[None] + b.reshape(-1, 1, 1, 1) * d2[None]
    out = []
    for i in range(0, pts.shape[0], batch_size):
        chunk = pts[i:i + batch_size]
        logits = model(chunk) if samples == 1 else ensemble_predict(model, chunk, samples)
        out.append(logits.argmax(1))
    return torch.cat(out).view(grid, grid).cpu()


def boundary_figure(panels: list[tuple[str, Tensor]], radius: float, true_label: int,
                    path: str, title: str = "") -> str:
    """One image per panel of predicted classes on the slice; the test image is at the centre."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 4.2), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, (name, labels) in zip(axes[0], panels, strict=True):
        ax.imshow(labels.numpy(), cmap=cmap, vmin=-0.5, vmax=9.5, origin="lower",
                  extent=(-radius, radius, -radius, radius), interpolation="nearest")
        ax.plot([0], [0], "k+", markersize=12, markeredgewidth=2)
        share = (labels == true_label).float().mean().item()
        ax.set_title(f"{name}\n{100 * share:.0f}% of plane = true class {true_label}", fontsize=8)
        ax.set_xlabel("adversarial direction (L2)", fontsize=8)
        ax.set_ylabel("random direction (L2)", fontsize=8)
        ax.tick_params(labelsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(k)) for k in range(10)]
    fig.legend(handles, [str(k) for k in range(10)], loc="lower center", ncol=10, fontsize=7,
               title="predicted class", title_fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.14, 1, 0.9))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ensure_dir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path
