"""APGD (schedule, losses, budget, best point, cross-check with torchattacks), the
gradient-free attack, and anoise.evaluation.evaluate: its figures, worst case, sanity checks
and their warnings, on small models trained in seconds."""

import functools
import json

import pytest
import torch
from torch import nn

from anoise import attacks as A
from anoise import evaluation
from anoise.apgd import apgd, apgd_targeted, checkpoints, dlr_loss, square, targeted_dlr_loss
from anoise.baselines import without_noise


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models: one thread is several times faster than two on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits(one_thread):
    from anoise.demo.data import load_images, split
    from anoise.demo.model import SmallCNN
    from anoise.training import fit, train_student

    x, y, _ = load_images("digits")
    xtr, ytr, xte, yte = split(x, y, 0.2, 0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        teacher = fit(SmallCNN(image_size=16), xtr[:800], ytr[:800], epochs=6, lr=3e-3,
                      batch_size=64, progress=False).eval()
        student = train_student(teacher, xtr[:800], ytr[:800], 0.5, epochs=1, lr=5e-4,
                                distill=0.5, batch_size=64, progress=False).eval()
    return dict(teacher=teacher, student=student, x=xte[:40], y=yte[:40])


def _torchattacks():
    # torchattacks 3.5.1 pins old requests / torchvision; it is installed with --no-deps.
    return pytest.importorskip("torchattacks")


def test_checkpoints_follow_the_papers_schedule():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), times 100 steps.
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    assert checkpoints(100) == [round(100 * q) for q in p[1:]]
    assert checkpoints(10) == list(range(2, 11))  # AutoAttack's integer intervals, min 1
    assert checkpoints(1) == [1]


def test_dlr_loss_matches_torchattacks_and_is_scale_invariant():
    ta = _torchattacks()
    logits, y = torch.randn(16, 5), torch.randint(0, 5, (16,))
    model = nn.Identity()
    expected = ta.APGD(model, loss="dlr").dlr_loss(logits, y)
    torch.testing.assert_close(dlr_loss(logits, y), expected)
    torch.testing.assert_close(dlr_loss(3 * logits + 2, y), expected, rtol=1e-5, atol=1e-5)
    assert ((dlr_loss(logits, y) > 0) == (logits.argmax(1) != y)).all()
    with pytest.raises(ValueError, match="3 classes"):
        dlr_loss(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("norm,eps", [("Linf", 0.05), ("L2", 0.5)])
def test_apgd_is_at_least_as_strong_as_torchattacks(digits, norm, eps):
    ta = _torchattacks()
    model, x = digits["teacher"], digits["x"]
    with torch.no_grad():
        y = model(x).argmax(1)  # every image attacked: both draw the same random start

    def fooled(adv):
        with torch.no_grad():
            return model(adv).argmax(1) != y

    for loss in ("ce", "dlr"):
        theirs = ta.APGD(model, norm=norm, eps=eps, steps=10, loss=loss, seed=0)(x, y)
        torch.manual_seed(0)
        ours = apgd(model, x, y, eps, norm=norm, steps=10, loss=loss)
        # Ours fools every image theirs fools (the same trajectory), and it does fool some.
        assert (fooled(theirs) <= fooled(ours)).all(), (norm, loss)
        assert 0 < fooled(ours).sum() < len(y)
    # On the true labels (some images already misclassified), another seed, 12 steps.
    y = digits["y"]
    for seed in (1,):
        theirs = ta.APGD(model, norm=norm, eps=eps, steps=12, seed=seed)(x, y)
        torch.manual_seed(seed)
        ours = apgd(model, x, y, eps, norm=norm, steps=12)
        with torch.no_grad():
            acc_theirs = (model(theirs).argmax(1) == y).float().mean().item()
            acc_ours = (model(ours).argmax(1) == y).float().mean().item()
        assert acc_ours <= acc_theirs + 1 / len(y)  # one image of tolerance for ties


def test_apgd_targeted_matches_torchattacks_apgdt(digits):
    ta = _torchattacks()
    model, x = digits["teacher"], digits["x"]
    logits, y = torch.randn(8, 6), torch.randint(0, 6, (8,))
    target = (y + 1) % 6
    expected = ta.APGDT(nn.Identity(), n_classes=6).dlr_loss_targeted(logits, y, target)
    torch.testing.assert_close(targeted_dlr_loss(logits, y, target), expected)
    with torch.no_grad():
        y = model(x).argmax(1)
    for targets in (1, 3):
        theirs = ta.APGDT(model, eps=0.05, steps=6, n_classes=targets + 1, seed=0)(x, y)
        torch.manual_seed(0)
        with torch.no_grad():  # apgd switches gradients on itself
            ours = apgd_targeted(model, x, y, 0.05, steps=6, targets=targets)
            fooled_theirs, fooled_ours = model(theirs).argmax(1) != y, model(ours).argmax(1) != y
        assert (fooled_theirs <= fooled_ours).all() and fooled_ours.any()
    with pytest.raises(ValueError, match="targets"):
        apgd_targeted(model, x, y, 0.05, targets=10)


def test_apgd_stays_in_budget_and_checks_arguments(digits):
    model, x, y = digits["teacher"], digits["x"][:8], digits["y"][:8]
    for norm, eps in (("Linf", 0.03), ("L2", 0.3)):
        adv = apgd(model, x, y, eps, norm=norm, steps=3, restarts=2)
        d = (adv - x).flatten(1)
        size = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
        assert (size <= eps * (1 + 1e-5)).all() and adv.min() >= 0 and adv.max() <= 1
        assert not torch.equal(adv, x)
    for kwargs, match in ((dict(eps=-1.0), "eps"), (dict(eps=0.1, norm="L1"), "norm"),
                          (dict(eps=0.1, steps=0), "steps"),
                          (dict(eps=0.1, eot_samples=0), "eot_samples"),
                          (dict(eps=0.1, restarts=True), "restarts"),
                          (dict(eps=0.1, loss="hinge"), "loss")):
        with pytest.raises(ValueError, match=match):
            apgd(model, x, y, **kwargs)


def test_apgd_eot_keeps_the_best_point_where_torchattacks_returns_clean_images(digits):
    # The pitfall of docs/evaluation.md: on a stochastic model, torchattacks' APGD-EOT
    # returns the clean image wherever no single draw was fooled during the run.
    _torchattacks()
    from anoise.demo.pitfall import compare

    model, x, y = digits["student"], digits["x"], digits["y"]
    r = compare(model, x, y, 0.1, steps=5, eot_samples=4, draws=8)
    assert r["shipped_clean_share"] > 0.1
    assert r["best_point"] < r["shipped"] - 0.05 < r["clean"]
    torch.manual_seed(0)
    ours = apgd(model, x, y, 0.1, steps=5, eot_samples=4)
    assert ((ours - x).flatten(1).abs().amax(1) > 0).all()  # never the clean image


def test_apgd_restarts_keep_each_images_best_run(digits):
    model, x, y = digits["teacher"], digits["x"], digits["y"]
    torch.manual_seed(3)
    runs = [apgd(model, x, y, 0.03, steps=4) for _ in range(3)]
    torch.manual_seed(3)
    best = apgd(model, x, y, 0.03, steps=4, restarts=3)
    with torch.no_grad():
        wrong = [model(r).argmax(1) != y for r in runs]
        assert ((model(best).argmax(1) != y) == (wrong[0] | wrong[1] | wrong[2])).all()
        loss = [nn.functional.cross_entropy(model(r), y, reduction="none") for r in runs]
        kept = torch.nn.functional.cross_entropy(model(best), y, reduction="none")
    unfooled = ~(wrong[0] | wrong[1] | wrong[2])
    torch.testing.assert_close(kept[unfooled], torch.stack(loss).amax(0)[unfooled])


def test_square_is_gradient_free_and_in_budget(digits):
    model, x, y = digits["teacher"], digits["x"][:20], digits["y"][:20]
    masked = _GradientMasked(model)
    torch.manual_seed(0)
    adv = square(masked, x, y, 0.1, queries=60)
    assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert (model(adv).argmax(1) == y).float().mean() < (model(x).argmax(1) == y).float().mean()
    adv2 = square(model, x, y, 0.5, norm="L2", queries=20)
    assert ((adv2 - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()


class _ZeroGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad)


class _GradientMasked(nn.Module):
    """``model`` with every input gradient zeroed: gradient attacks see a flat loss."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(_ZeroGrad.apply(x))


def test_evaluate_deterministic_model(digits):
    model, x, y = digits["teacher"], digits["x"], digits["y"]
    rep = evaluation.evaluate(model, x, y, 0.05, steps=5, draws=3, square_queries=20,
                              keep_adversarial=True, seed=0)
    assert not rep.stochastic
    attacks = ["PGD", "EOT-PGD margin", "APGD-CE", "APGD-DLR"]  # no EOT without noise
    assert list(rep.results) == ["clean"] + attacks + ["worst case"]
    # Deterministic: the worst case is correct exactly where every input is.
    every = torch.stack([rep.results[n].all_correct for n in ["clean"] + attacks]).all(0)
    assert torch.equal(rep.worst.all_correct, every)
    assert rep.worst.mean <= min(rep.results[n].mean for n in attacks)
    for i, name in enumerate(rep.winner):
        chosen = x[i] if name == "clean" else rep.adversarial[name][i]
        assert torch.equal(rep.adversarial["worst case"][i], chosen)
        assert rep.results[name].all_correct[i] == rep.worst.all_correct[i]
    assert sum(rep.wins().values()) == len(y)
    assert all(c.passed for c in rep.checks) and not rep.warnings
    assert [c.name for c in rep.checks] == [
        "gradient-free attack does not beat the gradient attacks",
        "accuracy goes to ~0 at a large eps", "more steps / draws do not lower the accuracy"]
    text = rep.table()
    for name in attacks + ["worst case", "Square (check)", "Report:", "check ok"]:
        assert name in text
    data = json.loads(rep.to_json())
    assert data["results"]["worst case"]["mean"] == rep.worst.mean
    assert data["winner"] == rep.winner and len(data["checks"]) == 3


def test_evaluate_stochastic_model_runs_the_adaptive_suite(digits):
    model, x, y = digits["student"], digits["x"][:30], digits["y"][:30]
    rep = evaluation.evaluate(model, x, y, 0.1, steps=3, eot_samples=2, draws=4,
                              noise_off=without_noise(model), square_queries=10, seed=0)
    assert rep.stochastic and model.training is False
    assert list(rep.results) == ["clean", "PGD", "EOT-PGD", "EOT-PGD margin", "APGD-CE",
                                 "APGD-DLR", "ensemble", "transfer", "worst case"]
    for r in rep.results.values():
        assert len(r.per_draw) == 4 and r.all_draws <= r.mean + 1e-12
    assert rep.settings["select_draws"] == 12 and rep.settings["eot_samples"] == 2
    assert "on 4 noise draws" in rep.table()
    l2 = evaluation.evaluate(model, x, y, 0.5, norm="L2", steps=3, eot_samples=2, draws=2,
                             checks=False)
    assert list(l2.results) == ["clean", "APGD-CE", "APGD-DLR", "ensemble", "worst case"]
    assert l2.checks == [] and l2.worst.mean < l2.results["clean"].mean


def test_failed_sanity_checks_are_warnings(digits):
    model, x, y = digits["teacher"], digits["x"][:30], digits["y"][:30]
    # Masked gradients: the gradient attacks do nothing, Square and a large eps expose it.
    rep = evaluation.evaluate(_GradientMasked(model), x, y, 0.3, steps=3, draws=1,
                              square_queries=60, seed=0)
    failed = {c.name for c in rep.checks if not c.passed}
    assert "gradient-free attack does not beat the gradient attacks" in failed
    assert "accuracy goes to ~0 at a large eps" in failed
    assert len(rep.warnings) == len(failed) and "WARNING" in rep.table()
    # A weak suite (FGSM at a tenth of the budget): more steps find much more.
    weak = {"tiny FGSM": functools.partial(A.fgsm, eps=0.01)}
    rep = evaluation.evaluate(model, x, y, 0.1, attacks=weak, steps=5, draws=1,
                              square_queries=5, seed=0)
    more = [c for c in rep.checks if c.name.startswith("more steps")][0]
    assert not more.passed and more.accuracy < more.reference


def test_evaluate_checks_its_arguments(digits):
    model, x, y = digits["teacher"], digits["x"][:4], digits["y"][:4]
    for kwargs, match in ((dict(eps=0.1, norm="L1"), "norm"), (dict(eps=-0.1), "eps"),
                          (dict(eps=0.1, effort_factor=0), "effort_factor"),
                          (dict(eps=0.1, worst_of=("nope",)), "worst_of")):
        with pytest.raises(ValueError, match=match):
            evaluation.evaluate(model, x, y, **kwargs)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluation.evaluate(model, x * 2, y, 0.1)
    with pytest.raises(ValueError, match="one label per input"):
        evaluation.evaluate(model, x, y[:3], 0.1)
    too_big = {"too big": functools.partial(A.fgsm, eps=0.2)}
    with pytest.raises(ValueError, match="'too big' exceeds the Linf budget"):
        evaluation.evaluate(model, x, y, 0.1, attacks=too_big, checks=False)
    # An unbounded attack may run when it is left out of the worst case.
    rep = evaluation.evaluate(model, x, y, 0.1, attacks=too_big, worst_of=(), checks=False)
    assert rep.worst_of == ("clean",) and "too big" in rep.results
