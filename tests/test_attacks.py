"""Attacks on models whose optimal perturbation is known, EOT averaging, the margin loss,
restarts, the ensemble and transfer attacks, the harness's per-image figures and worst case."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES
from torch import nn

import anoise
from anoise import attacks as A
from anoise.baselines import PNIConv2d, RSEConv2d, pni_alphas, to_pni, to_rse, without_noise

D = 12


def linear_binary(device, seed=0):
    """Two logits whose difference is ``w.x + b``: class 1 iff ``w.x + b > 0``."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(D, generator=gen)
    b = torch.tensor(-0.5 * w.sum().item() + 0.3)  # class 1 at the box centre
    model = nn.Sequential(nn.Flatten(), nn.Linear(D, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([-w / 2, w / 2]))
        model[1].bias.copy_(torch.stack([-b / 2, b / 2]))
    return model.to(device).eval(), w.to(device), b.to(device)


def interior_points(n, device, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (0.3 + 0.4 * torch.rand(n, D, generator=gen)).to(device)


def tiny_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 6, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(6 * 2 * 2, 3))


@pytest.mark.parametrize("device", DEVICES)
def test_fgsm_moves_along_minus_sign_w(device):
    model, w, b = linear_binary(device)
    x = interior_points(16, device)
    y = (x @ w + b > 0).long()
    adv = A.fgsm(model, x, y, 0.1)
    # Raising the loss of the true class pushes w.x towards the other side.
    direction = torch.where(y[:, None] == 1, -w.sign(), w.sign())
    torch.testing.assert_close(adv - x, 0.1 * direction, atol=1e-6, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_fgsm_stays_in_unit_box(device):
    model, w, b = linear_binary(device)
    x = torch.zeros(4, D, device=device)
    adv = A.fgsm(model, x, torch.ones(4, dtype=torch.long, device=device), 0.3)
    assert adv.min() >= 0 and adv.max() <= 1
    torch.testing.assert_close(adv, (-0.3 * w.sign()).clamp(0, 1).expand(4, D))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_reaches_box_corner(device, random_start):
    model, w, b = linear_binary(device)
    x = interior_points(16, device)
    x[0, :3] = torch.tensor([0.0, 1.0, 0.02])  # corners clipped by [0, 1]
    y = (x @ w + b > 0).long()
    torch.manual_seed(0)
    adv = A.pgd(model, x, y, 0.05, steps=12, step_size=0.02, random_start=random_start)
    direction = torch.where(y[:, None] == 1, -w.sign(), w.sign())
    corner = (x + 0.05 * direction).clamp(0, 1)
    torch.testing.assert_close(adv, corner, atol=1e-6, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_cw_finds_near_minimal_l2_crossing(device):
    model, w, b = linear_binary(device)
    x = interior_points(8, device)
    x = x + 0.02 * w.sign() * torch.where(x @ w + b > 0, 1.0, -1.0)[:, None]  # off the plane
    y = (x @ w + b > 0).long()
    adv = A.cw_l2(model, x, y, c=1.0, steps=300, lr=0.01, search_steps=6)
    assert ((adv @ w + b > 0).long() != y).all()
    dist = (adv - x).norm(dim=1)
    minimum = (x @ w + b).abs() / w.norm()
    assert (dist >= minimum * (1 - 1e-4)).all()
    assert (dist <= minimum * 1.05 + 1e-3).all(), (dist / minimum)


@pytest.mark.parametrize("device", DEVICES)
def test_cw_max_norm_rejects_larger_perturbations(device):
    model, w, b = linear_binary(device)
    x = interior_points(8, device)
    y = (x @ w + b > 0).long()
    minimum = ((x @ w + b).abs() / w.norm()).min().item()
    adv = A.cw_l2(model, x, y, c=10.0, steps=50, lr=0.05, max_norm=0.5 * minimum)
    torch.testing.assert_close(adv, x, atol=1e-6, rtol=0)


def test_attack_arguments_are_checked():
    model, _, _ = linear_binary("cpu")
    x, y = torch.rand(2, D), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="eps"):
        A.fgsm(model, x, y, -0.1)
    with pytest.raises(ValueError, match="steps"):
        A.pgd(model, x, y, 0.1, steps=0)
    with pytest.raises(ValueError, match="samples"):
        A.eot_gradient(model, x, y, samples=0)
    with pytest.raises(ValueError, match="c must"):
        A.cw_l2(model, x, y, c=float("nan"))


def test_attacks_leave_parameter_grads_alone():
    model = tiny_cnn()
    x, y = torch.rand(3, 1, 9, 9), torch.tensor([0, 1, 2])
    A.pgd(model, x, y, 0.1, steps=2)
    A.cw_l2(model, x, y, steps=2)
    assert all(p.grad is None for p in model.parameters())


def _torchattacks():
    # torchattacks 3.5.1 pins old requests / torchvision; it is installed with --no-deps.
    return pytest.importorskip("torchattacks")


def test_fgsm_matches_torchattacks():
    ta = _torchattacks()
    model = tiny_cnn().eval()
    x, y = torch.rand(8, 1, 9, 9), torch.randint(0, 3, (8,))
    expected = ta.FGSM(model, eps=0.07)(x, y)
    torch.testing.assert_close(A.fgsm(model, x, y, 0.07), expected, atol=1e-7, rtol=0)


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_matches_torchattacks(random_start):
    ta = _torchattacks()
    model = tiny_cnn().eval()
    x, y = torch.rand(8, 1, 9, 9), torch.randint(0, 3, (8,))
    torch.manual_seed(5)
    expected = ta.PGD(model, eps=0.1, alpha=0.02, steps=7, random_start=random_start)(x, y)
    torch.manual_seed(5)
    ours = A.pgd(model, x, y, 0.1, steps=7, step_size=0.02, random_start=random_start)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
    assert not torch.equal(ours, x)


def stochastic_cnn(alpha=1.0):
    student = anoise.to_stochastic(tiny_cnn(), alpha)
    anoise.calibrate(student, [torch.rand(16, 1, 9, 9)])
    return student.eval()


def test_eot_gradient_is_mean_of_single_draw_gradients():
    model = stochastic_cnn()
    x, y = torch.rand(4, 1, 9, 9), torch.tensor([0, 1, 2, 0])
    torch.manual_seed(11)
    eot = A.eot_gradient(model, x, y, samples=5)
    torch.manual_seed(11)
    singles = [A.eot_gradient(model, x, y, samples=1) for _ in range(5)]
    assert not torch.allclose(singles[0], singles[1])  # the noise is on
    torch.testing.assert_close(eot, torch.stack(singles).mean(0), atol=1e-7, rtol=1e-6)


def test_eot_pgd_uses_averaged_gradients():
    model = stochastic_cnn()
    x, y = torch.rand(4, 1, 9, 9), torch.tensor([0, 1, 2, 0])
    torch.manual_seed(3)
    one = A.eot_pgd(model, x, y, 0.1, samples=1, steps=3)
    torch.manual_seed(3)
    torch.testing.assert_close(one, A.pgd(model, x, y, 0.1, steps=3), atol=0, rtol=0)
    torch.manual_seed(3)
    assert not torch.equal(A.eot_pgd(model, x, y, 0.1, samples=4, steps=3), one)
    # On a deterministic model every draw is the same, so EOT changes nothing.
    det = tiny_cnn().eval()
    torch.manual_seed(3)
    a = A.eot_pgd(det, x, y, 0.1, samples=3, steps=3)
    torch.manual_seed(3)
    torch.testing.assert_close(a, A.pgd(det, x, y, 0.1, steps=3), atol=1e-7, rtol=0)


def test_evaluate_deterministic_model():
    model, w, b = linear_binary("cpu")
    x = interior_points(40, "cpu", seed=3)
    y = (x @ w + b > 0).long()
    y[:10] = 1 - y[:10]  # 75% clean accuracy
    ev = A.evaluate(model, x, y, {"same": lambda m, xb, yb: xb,
                                  "fgsm": lambda m, xb, yb: A.fgsm(m, xb, yb, 0.5)},
                    draws=3, batch_size=16, keep_adversarial=True)
    clean = ev["clean"]
    assert not clean.stochastic and clean.per_draw == [0.75] and clean.std == 0
    assert clean.ensemble == clean.all_draws == clean.majority == clean.mean == 0.75
    assert ev["same"].mean == 0.75
    assert ev["fgsm"].mean < 0.75
    assert ev.adversarial["fgsm"].shape == x.shape and "clean" not in ev.adversarial
    assert str(clean) == "75.0+-0.0 [75.0]"


def test_evaluate_stochastic_model():
    model = stochastic_cnn(alpha=2.0).train()
    x, y = torch.rand(64, 1, 9, 9), torch.randint(0, 3, (64,))
    torch.manual_seed(0)
    ev = A.evaluate(model, x, y, {"pgd": lambda m, xb, yb: A.pgd(m, xb, yb, 0.1, steps=2)},
                    draws=4)
    assert model.training  # mode restored
    res = ev["clean"]
    assert res.stochastic and len(res.per_draw) == 4
    assert len(set(res.per_draw)) > 1 and res.std > 0
    mean = sum(res.per_draw) / 4
    assert math.isclose(res.mean, mean)
    assert math.isclose(res.std, math.sqrt(sum((a - mean) ** 2 for a in res.per_draw) / 3))
    # The same draws in the same order, and the ensemble is anoise.ensemble_predict over them.
    model.eval()
    torch.manual_seed(0)
    A.is_stochastic(model, x)
    logits = [model(x) for _ in range(4)]
    assert [(z.argmax(1) == y).float().mean().item() for z in logits] == res.per_draw
    torch.manual_seed(0)
    A.is_stochastic(model, x)
    ens = anoise.ensemble_predict(model, x, 4).argmax(1) == y
    assert torch.equal(ens, res.ensemble_correct)
    assert res.all_draws <= res.mean <= 1 and 0 <= res.all_draws


def test_result_per_image_figures_on_hand_made_draws():
    # 3 draws x 4 images x 3 classes; true labels 0, 1, 2, 0.
    y = torch.tensor([0, 1, 2, 0])
    pred = torch.tensor([[0, 1, 2, 1],
                         [0, 2, 2, 2],
                         [0, 1, 1, 0]])
    logits = F.one_hot(pred, 3).float() * 4.0
    logits[2, 3] = torch.tensor([3.0, 0.0, 0.0])  # image 3: votes 0, 1, 2 -> a tie for 0
    r = A.Result.from_draws(logits, y)
    assert r.per_draw == [0.75, 0.5, 0.75]
    torch.testing.assert_close(r.correct_rate, torch.tensor([1.0, 2 / 3, 2 / 3, 1 / 3]))
    assert r.all_correct.tolist() == [True, False, False, False]
    # Image 3 got one vote each for classes 0, 1 and 2: a tie, counted wrong.
    assert r.majority_correct.tolist() == [True, True, True, False]
    probs = logits.softmax(2).mean(0)
    assert r.ensemble_correct.tolist() == (probs.argmax(1) == y).tolist()
    torch.testing.assert_close(r.true_prob, probs[torch.arange(4), y])
    assert math.isclose(r.mean, (1 + 2 / 3 + 2 / 3 + 1 / 3) / 4, rel_tol=1e-6)
    assert math.isclose(r.mean, sum(r.per_draw) / 3, rel_tol=1e-6)
    assert (r.all_draws, r.majority) == (0.25, 0.75)
    with pytest.raises(ValueError, match="draws, n, classes"):
        A.Result.from_draws(logits[0], y)


def _result(rate, prob):
    rate = torch.tensor(rate)
    return A.Result([], rate, rate == 1, rate > 0.5, rate > 0.5, torch.tensor(prob), True)


def test_select_worst_is_per_image():
    a = _result([1.0, 0.0, 0.5, 0.5, 1.0], [0.9, 0.1, 0.6, 0.5, 0.9])
    b = _result([0.5, 0.5, 0.5, 0.5, 1.0], [0.6, 0.4, 0.4, 0.5, 0.9])
    # Lowest rate; on equal rates the lower true-class probability; then the first.
    assert A.select_worst([a, b]).tolist() == [1, 0, 1, 0, 0]
    assert A.select_worst([a]).tolist() == [0] * 5
    with pytest.raises(ValueError, match="at least one"):
        A.select_worst([])


def test_evaluate_worst_case_deterministic_is_per_image():
    model, w, b = linear_binary("cpu")
    x = interior_points(10, "cpu", seed=4)
    y = (x @ w + b > 0).long()
    # Hand-made "attacks": cross the boundary on images 0-4 (A) and 3-7 (B).
    far = x - 2.0 * torch.where(y[:, None] == 1, w, -w) / w.norm() ** 2 * (x @ w + b).abs()[:, None]

    def fooling(idx):
        def attack(m, xb, yb):
            out = xb.clone()
            out[idx] = far[idx]
            return out
        return attack

    ev = A.evaluate(model, x, y, {"A": fooling(slice(0, 5)), "B": fooling(slice(3, 8))},
                    worst_case=("clean", "A", "B"))
    assert ev["A"].mean == 0.5 and ev["B"].mean == 0.5
    worst = ev["worst case"]
    assert worst.correct_rate.tolist() == [0.0] * 8 + [1.0] * 2
    assert ev.choice.tolist() == [1] * 5 + [2] * 3 + [0] * 2
    with pytest.raises(ValueError, match="worst_case"):
        A.evaluate(model, x, y, {"A": fooling(0)}, worst_case=("C",))


def test_evaluate_worst_case_selects_then_reclassifies_on_fresh_draws():
    model = stochastic_cnn(alpha=2.0)
    x, y = torch.rand(48, 1, 9, 9), torch.randint(0, 3, (48,))
    attacks = {"pgd": lambda m, xb, yb: A.pgd(m, xb, yb, 0.2, steps=2)}
    torch.manual_seed(1)
    ev = A.evaluate(model, x, y, attacks, draws=3, select_draws=5,
                    worst_case=("clean", "pgd"), keep_adversarial=True)
    # Replay the stream: each candidate's 3 draws, then its 5 selection draws; the worst
    # case is classified on 3 more.
    torch.manual_seed(1)
    A.is_stochastic(model, x)
    A.draw_logits(model, x, 3)
    select_clean = A.Result.from_draws(A.draw_logits(model, x, 5), y)
    xa = attacks["pgd"](model, x, y)
    torch.testing.assert_close(xa, ev.adversarial["pgd"], atol=0, rtol=0)
    A.draw_logits(model, xa, 3)
    select_pgd = A.Result.from_draws(A.draw_logits(model, xa, 5), y)
    choice = A.select_worst([select_clean, select_pgd])
    assert torch.equal(choice, ev.choice) and 0 < choice.sum() < 48
    chosen = torch.where(choice[:, None, None, None] == 1, xa, x)
    again = A.Result.from_draws(A.draw_logits(model, chosen, 3), y)
    torch.testing.assert_close(again.correct_rate, ev["worst case"].correct_rate)
    assert ev["worst case"].per_draw == again.per_draw
    with pytest.raises(ValueError, match="select_draws"):
        A.evaluate(model, x, y, attacks, select_draws=0)


def test_margin_loss():
    z = torch.tensor([[2.0, 1.0, -1.0], [0.0, 3.0, 1.0], [1.0, 1.0, 0.0]])
    y = torch.tensor([0, 0, 1])
    torch.testing.assert_close(A.margin_loss(z, y), torch.tensor([-1.0, 3.0, 0.0]))
    # Positive exactly where misclassified; a tie (margin 0) is up to argmax's tie-break.
    assert ((A.margin_loss(z, y) > 0) == (z.argmax(1) != y))[:2].all()


def test_margin_pgd_beats_saturated_cross_entropy():
    # Logits scaled so far that float32 softmax saturates: the cross-entropy gradient is
    # exactly zero on confidently classified points and PGD-CE cannot move; the margin's
    # gradient does not vanish.
    model, w, b = linear_binary("cpu")
    with torch.no_grad():
        model[1].weight *= 1e4
        model[1].bias *= 1e4
    x = interior_points(32, "cpu", seed=5)
    y = (x @ w + b > 0).long()
    eps = 0.1
    reachable = (x @ w + b).abs() < eps * w.abs().sum()  # the eps-ball crosses the plane
    torch.manual_seed(0)
    ce = A.pgd(model, x, y, eps, steps=10, random_start=False)
    margin = A.pgd(model, x, y, eps, steps=10, random_start=False, loss="margin")

    def acc(a):
        return ((a @ w + b > 0).long() == y).float().mean().item()

    assert acc(margin) <= acc(ce)
    assert acc(margin) == 1 - reachable.float().mean().item() < acc(ce) == 1.0
    with pytest.raises(ValueError, match="loss"):
        A.pgd(model, x, y, eps, loss="hinge")


def test_margin_pgd_at_least_as_strong_on_a_toy_cnn():
    torch.manual_seed(0)
    model = tiny_cnn().eval()
    x = torch.rand(200, 1, 9, 9)
    with torch.no_grad():
        y = model(x).argmax(1)  # 100% clean accuracy
    torch.manual_seed(1)
    ce = A.pgd(model, x, y, 0.05, steps=10)
    torch.manual_seed(1)
    other = A.pgd(model, x, y, 0.05, steps=10, loss="margin")
    with torch.no_grad():
        acc_ce = (model(ce).argmax(1) == y).float().mean()
        acc = (model(other).argmax(1) == y).float().mean()
    assert acc <= acc_ce < 1


def test_restarts_keep_each_images_best_run():
    model = tiny_cnn().eval()
    x = torch.rand(64, 1, 9, 9)
    with torch.no_grad():
        y = model(x).argmax(1)
    torch.manual_seed(2)
    runs = [A.pgd(model, x, y, 0.03, steps=3, loss="margin") for _ in range(3)]
    torch.manual_seed(2)
    best = A.pgd(model, x, y, 0.03, steps=3, loss="margin", restarts=3)
    margins = torch.stack([A.mean_margin(model, r, y) for r in runs])
    expected = torch.stack(runs)[margins.argmax(0), torch.arange(64)]
    torch.testing.assert_close(best, expected, atol=0, rtol=0)
    assert len(set(margins.argmax(0).tolist())) > 1  # different images keep different runs
    with torch.no_grad():
        wrong = [(model(r).argmax(1) != y) for r in runs]
        assert ((model(best).argmax(1) != y) == (wrong[0] | wrong[1] | wrong[2])).all()
    torch.manual_seed(2)
    torch.testing.assert_close(A.pgd(model, x, y, 0.03, steps=3, loss="margin", restarts=1),
                               runs[0], atol=0, rtol=0)
    with pytest.raises(ValueError, match="random_start"):
        A.pgd(model, x, y, 0.03, restarts=2, random_start=False)
    with pytest.raises(ValueError, match="restarts"):
        A.pgd(model, x, y, 0.03, restarts=0)


def test_eot_pgd_matches_torchattacks_on_a_stochastic_model():
    ta = _torchattacks()
    model = stochastic_cnn()
    x, y = torch.rand(8, 1, 9, 9), torch.randint(0, 3, (8,))
    attack = ta.EOTPGD(model, eps=0.1, alpha=0.02, steps=4, eot_iter=3)
    torch.manual_seed(7)
    expected = attack(x, y)
    model.eval()
    torch.manual_seed(7)
    ours = A.eot_pgd(model, x, y, 0.1, samples=3, steps=4, step_size=0.02)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


def test_mean_softmax_is_the_ensemble():
    model = stochastic_cnn()
    x = torch.rand(6, 1, 9, 9)
    ens = A.MeanSoftmax(model, samples=5)
    torch.manual_seed(4)
    logp = ens(x)
    torch.manual_seed(4)
    torch.testing.assert_close(logp.exp(), anoise.ensemble_predict(model, x, 5))
    torch.testing.assert_close(logp.logsumexp(1), torch.zeros(6), atol=1e-6, rtol=0)
    # On a deterministic model the ensemble is the model: same log-probabilities, same PGD.
    det = tiny_cnn().eval()
    torch.testing.assert_close(A.MeanSoftmax(det, 3)(x), F.log_softmax(det(x), 1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.manual_seed(5)
    a = A.ensemble_pgd(det, x, y, 0.1, samples=3, steps=4)
    torch.manual_seed(5)
    torch.testing.assert_close(a, A.pgd(det, x, y, 0.1, steps=4), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="samples"):
        A.MeanSoftmax(det, 0)


def test_ensemble_gradient_flows_through_every_draw():
    model = stochastic_cnn()
    x = torch.rand(4, 1, 9, 9, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    torch.manual_seed(6)
    F.nll_loss(A.MeanSoftmax(model, 3)(x), y).backward()
    # By hand: -log(mean_k softmax_k[y]), with the same three draws.
    x2 = x.detach().clone().requires_grad_(True)
    torch.manual_seed(6)
    p = sum(model(x2).softmax(1) for _ in range(3)) / 3
    (-p[torch.arange(4), y].log().mean()).backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-6, rtol=1e-5)


def test_transfer_attacks_the_source_model():
    student = stochastic_cnn()
    twin = without_noise(student)
    x, y = torch.rand(5, 1, 9, 9), torch.tensor([0, 1, 2, 0, 1])
    attack = functools.partial(A.pgd, eps=0.1, steps=3)
    torch.manual_seed(8)
    moved = A.transfer(twin, attack)(student, x, y)
    torch.manual_seed(8)
    torch.testing.assert_close(moved, attack(twin, x, y), atol=0, rtol=0)
    torch.manual_seed(8)
    assert not torch.equal(moved, attack(student, x, y))


def test_without_noise_keeps_the_weights_and_removes_every_noise():
    teacher = tiny_cnn().eval()
    x = torch.rand(8, 1, 9, 9)
    expected = teacher(x)
    student = anoise.to_stochastic(teacher, 0.7, layers=(nn.Conv2d, nn.Linear))
    anoise.calibrate(student, [x])
    for noisy in (student.eval(), to_pni(teacher, 0.5).eval(), to_rse(teacher, 0.3, 0.2)):
        assert A.is_stochastic(noisy, x)
        quiet = without_noise(noisy).eval()
        torch.testing.assert_close(quiet(x), expected, atol=1e-6, rtol=1e-6)
        assert not A.is_stochastic(quiet, x)
        assert A.is_stochastic(noisy, x)  # the original keeps its noise
    assert [m.alpha for m in anoise.noise_layers(without_noise(student))] == [0.0] * 3
    with pytest.raises(ValueError, match="no AdaptiveNoise"):
        without_noise(teacher)


def test_pni_and_rse_layers():
    conv = nn.Conv2d(2, 3, 3)
    x = torch.rand(4, 2, 6, 6)
    pni = PNIConv2d.from_module(conv, pni_alpha=0.0)
    rse = RSEConv2d.from_module(conv, noise_std=0.0)
    torch.testing.assert_close(pni(x), conv(x))
    torch.testing.assert_close(rse(x), conv(x))
    for layer in (PNIConv2d.from_module(conv, 0.5).eval(), RSEConv2d.from_module(conv, 0.3)):
        assert not torch.equal(layer(x), layer(x))  # noise stays on in eval
    noisy = PNIConv2d.from_module(conv, 0.5)
    noisy(x).square().sum().backward()
    assert noisy.pni_alpha.grad is not None and noisy.pni_alpha.grad != 0
    teacher = tiny_cnn()
    p, r = to_pni(teacher, 0.3), to_rse(teacher, 0.2, 0.1)
    assert pni_alphas(p) == pytest.approx([0.3, 0.3])
    assert [m.noise_std for m in r.modules() if isinstance(m, RSEConv2d)] == [0.2, 0.1]
    assert all(type(m) is not PNIConv2d for m in teacher.modules())
    torch.testing.assert_close(p[0].weight, teacher[0].weight)
    with pytest.raises(ValueError, match="noise_std"):
        RSEConv2d(1, 1, 3, noise_std=-1.0)
