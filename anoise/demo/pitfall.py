"""APGD with EOT as torchattacks 3.5.1 ships it vs. keeping each image's best point.

    python -m anoise.demo.pitfall [--images 200] [--steps 10] [--eot 20] [--draws 20]

torchattacks' APGD (and the ``AutoAttack(version='rand')`` built from it) returns an image's
adversarial example only if *one single noise draw* misclassified an iterate during the run,
and the clean image otherwise.  On a stochastic model that throws away most of the attack's
work: the highest-loss point usually fools the model on many fresh draws even where no draw
of the run was fooled.  This script trains a small stochastic student (seconds), runs both
at the same settings, and scores every output on fresh draws.
"""

from __future__ import annotations

import argparse
import time

import torch

from .. import attacks as A
from ..apgd import apgd


def compare(model, x, y, eps: float, *, steps: int = 10, eot_samples: int = 20,
            draws: int = 20, seed: int = 0) -> dict:
    """Accuracy (per-draw mean over ``draws`` fresh draws) under torchattacks' APGD-CE with
    EOT as shipped and under :func:`anoise.apgd.apgd` at the same settings, and the share of
    torchattacks' outputs that are the unperturbed clean image."""
    import torchattacks

    model.eval()
    torch.manual_seed(seed)
    shipped = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, loss="ce",
                                eot_iter=eot_samples, seed=seed)(x, y)
    model.eval()  # torchattacks may switch the mode
    torch.manual_seed(seed)
    ours = apgd(model, x, y, eps, steps=steps, eot_samples=eot_samples)

    def accuracy(adv) -> float:
        return A.Result.from_draws(A.draw_logits(model, adv, draws), y).mean

    unchanged = (shipped - x).flatten(1).abs().amax(1) == 0
    return dict(clean=accuracy(x), shipped=accuracy(shipped), best_point=accuracy(ours),
                shipped_clean_share=unchanged.double().mean().item())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m anoise.demo.pitfall",
                                description=__doc__.split("\n\n")[2],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=int, default=200, help="test images attacked")
    p.add_argument("--eps", type=float, default=0.1, help="L-inf budget")
    p.add_argument("--alpha", type=float, default=0.5, help="the student's noise level")
    p.add_argument("--steps", type=int, default=10,
                   help="APGD steps (10 is what torchattacks' AutoAttack builds)")
    p.add_argument("--eot", type=int, default=20, help="noise draws per gradient")
    p.add_argument("--draws", type=int, default=20, help="fresh draws each output is scored on")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, training, attacks")
    p.add_argument("--dataset", choices=("auto", "mnist", "digits"), default="auto",
                   help="as in python -m anoise.demo")
    args = p.parse_args(argv)
    from ..training import fit, train_student
    from .data import load_images, split
    from .model import SmallCNN

    torch.set_num_threads(1)
    t0 = time.time()
    images, labels, desc = load_images(args.dataset)
    xtr, ytr, xte, yte = split(images, labels, 0.2, args.seed)
    torch.manual_seed(args.seed)
    teacher = fit(SmallCNN(image_size=xtr.shape[-1]), xtr, ytr, epochs=5, lr=3e-3,
                  batch_size=128, progress=False, seed=args.seed)
    student = train_student(teacher, xtr, ytr, args.alpha, epochs=1, lr=5e-4, distill=0.5,
                            batch_size=128, progress=False, seed=args.seed)
    x, y = xte[:args.images], yte[:args.images]
    r = compare(student, x, y, args.eps, steps=args.steps, eot_samples=args.eot,
                draws=args.draws, seed=args.seed)
    print(f"{desc}; student alpha {args.alpha:g}; {len(x)} test images; L-inf eps "
          f"{args.eps:g}; APGD-CE, {args.steps} steps x {args.eot} draws per gradient; "
          f"accuracy = per-draw mean over {args.draws} fresh draws")
    print(f"clean                                   {100 * r['clean']:5.1f}%")
    print(f"torchattacks APGD as shipped            {100 * r['shipped']:5.1f}%  "
          f"({100 * r['shipped_clean_share']:.1f}% of its outputs are the clean image)")
    print(f"anoise.apgd.apgd (best point kept)      {100 * r['best_point']:5.1f}%")
    print(f"({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
