"""Quickstart: your own classifier, then its Deep Support Vectors, through the Python API only.

    python examples/quickstart.py            # writes dsv_digits.png next to where you run it

Trains a small CNN on scikit-learn's 8x8 digits with a plain torch loop (a few seconds), then
synthesizes one DSV per class from noise and saves them as a labelled PNG grid.
"""

import time

start = time.perf_counter()  # the total below includes the imports

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import dsv

torch.set_num_threads(1)  # tensors this small run fastest on one thread
torch.manual_seed(0)

# 1. your data and your model: digits scaled to [0, 1], then normalized to mean 0.5, std 0.5
digits = load_digits()
images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)  # (1797, 1, 8, 8)
x_train, x_test, y_train, y_test = train_test_split(
    (images - 0.5) / 0.5, torch.tensor(digits.target), test_size=0.2, random_state=0
)
model = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1),
    nn.ReLU(),
    nn.AvgPool2d(2),
    nn.Conv2d(16, 32, 3, padding=1),
    nn.ReLU(),
    nn.AvgPool2d(2),
    nn.Flatten(),
    nn.Linear(32 * 2 * 2, 10),
)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
for _step in range(200):  # full batch: 1437 images
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x_train), y_train).backward()
    optimizer.step()
model.eval()
with torch.no_grad():
    accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
print(f"test accuracy of the classifier: {accuracy:.3f}")

# 2. its Deep Support Vectors: one per class, from noise, with a smoothness prior and shifted
#    copies; mean/std say how to turn model inputs back into images for the grid
result = dsv.synthesize(
    model,
    targets=range(10),
    input_shape=(1, 8, 8),
    iterations=400,
    lr_x=0.02,
    init={"name": "noise", "std": 0.3},
    priors=[{"name": "tv", "weight": 0.3}],
    augmentations=[{"name": "translate", "strength": 0.125}],
    mean=0.5,
    std=0.5,
    device="cpu",
    progress=False,
)
print(result)
s = result.summary
print(
    f"classified as their target: {s['classified_as_target']}/{s['candidates']}, alive {s['alive']}, "
    f"relative stationarity {s['relative_stationarity']:.3f}, "
    f"mean entropy {s['entropy_start']:.3f} -> {s['entropy_end']:.3f} nats"
)
print(f"wrote {result.save_grid('dsv_digits.png')}")
print(f"total time {time.perf_counter() - start:.1f} s")
