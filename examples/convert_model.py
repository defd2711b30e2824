"""Turn a deterministic CNN into a teacher-initialised stochastic student (synthetic data).

Trains a small teacher on a synthetic 4-class image task, converts it with
``anoise.to_stochastic``, fine-tunes the student briefly and prints clean accuracy of the
teacher, of the student (mean over noise draws) and of the student's ensemble prediction.
"""

import torch
from torch import nn

import anoise


def make_data(n, generator):
    # Each class is a bright square in one quadrant, under noise.
    y = torch.randint(0, 4, (n,), generator=generator)
    x = torch.randn(n, 1, 16, 16, generator=generator) * 0.5
    for i, c in enumerate(y.tolist()):
        r, q = divmod(c, 2)
        x[i, 0, r * 8 + 2 : r * 8 + 6, q * 8 + 2 : q * 8 + 6] += 2.0
    return x, y


def train(model, x, y, steps, lr=0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def main():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x_train, y_train = make_data(2048, g)
    x_test, y_test = make_data(512, g)
    teacher = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(32, 4),
    )
    train(teacher, x_train, y_train, steps=150)

    student = anoise.to_stochastic(teacher, alpha=0.5)   # teacher-initialised, teacher untouched
    train(student, x_train, y_train, steps=50, lr=0.01)  # fine-tune with the noise on
    anoise.calibrate(student, [x_train[i : i + 256] for i in range(0, 1024, 256)])

    teacher.eval()
    student.eval()                                        # the noise stays on in eval
    with torch.no_grad():
        acc_teacher = (teacher(x_test).argmax(1) == y_test).float().mean().item()
        draws = [(student(x_test).argmax(1) == y_test).float().mean().item() for _ in range(5)]
        probs = anoise.ensemble_predict(student, x_test, samples=10)
    acc_ens = (probs.argmax(1) == y_test).float().mean().item()
    mean = sum(draws) / len(draws)
    std = (sum((d - mean) ** 2 for d in draws) / (len(draws) - 1)) ** 0.5
    print(f"backends: { {k: bool(v) for k, v in anoise.backends().items()} }")
    print(f"teacher clean accuracy:          {acc_teacher:.3f}")
    print(f"student clean accuracy (5 draws): {mean:.3f} +- {std:.3f}")
    print(f"student ensemble (10 samples):   {acc_ens:.3f}")


if __name__ == "__main__":
    main()
