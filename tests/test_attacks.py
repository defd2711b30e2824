"""Attacks on models whose optimal perturbation is known, EOT averaging, the harness."""

import math

import pytest
import torch
from conftest import DEVICES
from torch import nn

import anoise
from anoise import attacks as A
from anoise.baselines import PNIConv2d, RSEConv2d, pni_alphas, to_pni, to_rse

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
    assert clean.ensemble == 0.75 and ev["same"].mean == 0.75
    assert ev["fgsm"].mean < 0.75
    assert ev.adversarial["fgsm"].shape == x.shape and "clean" not in ev.adversarial
    assert str(clean) == "75.0+-0.0 [75.0]"


def test_evaluate_stochastic_model():
    model = stochastic_cnn(alpha=2.0).train()
    x, y = torch.rand(64, 1, 9, 9), torch.randint(0, 3, (64,))
    torch.manual_seed(0)
    ev = A.evaluate(model, x, y, {"pgd": lambda m, xb, yb: A.pgd(m, xb, yb, 0.1, steps=2)},
                    draws=4, ensemble_samples=3)
    assert model.training  # mode restored
    res = ev["clean"]
    assert res.stochastic and len(res.per_draw) == 4
    assert len(set(res.per_draw)) > 1 and res.std > 0
    mean = sum(res.per_draw) / 4
    assert math.isclose(res.mean, mean)
    assert math.isclose(res.std, math.sqrt(sum((a - mean) ** 2 for a in res.per_draw) / 3))
    # The ensemble figure is anoise.ensemble_predict's accuracy on the same inputs.
    model.eval()
    torch.manual_seed(0)
    A.is_stochastic(model, x)
    draws = [(model(x).argmax(1) == y).float().mean().item() for _ in range(4)]
    ens = (anoise.ensemble_predict(model, x, 3).argmax(1) == y).float().mean().item()
    assert draws == res.per_draw and math.isclose(ens, res.ensemble)


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
