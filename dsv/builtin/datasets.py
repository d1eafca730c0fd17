"""Built-in data sets: fashion-mnist, digits, cifar10, cifar100, svhn, imagefolder.

A data set factory returns a :class:`DatasetBundle`: train and test splits yielding
``(image in [0, 1] of shape (C, H, W), label)``, class names, the normalization the models use,
and a fingerprint that changes when the data change (the train stage's cache key).
Nothing is downloaded unless the pipeline says ``download = true``.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import attrs
import numpy as np
import torch
from torch.utils.data import TensorDataset

from dsv.errors import DsvError
from dsv.models import IMAGENET_MEAN, IMAGENET_STD
from dsv.plugins import DatasetBundle, hookimpl

FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


class DatasetError(DsvError):
    pass


def _fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _bundle_from_arrays(name, train_x, train_y, test_x, test_y, classes, mean, std, subset=None) -> DatasetBundle:
    """uint8 (N, H, W[, C]) arrays -> float tensors (N, C, H, W) in [0, 1]; ``subset`` (a
    :class:`Subset`) keeps some images of some classes first."""
    if subset is not None and subset.active:
        train_x, train_y, test_x, test_y, classes, mean, std = subset.apply(
            name, train_x, train_y, test_x, test_y, classes, mean, std
        )

    def to_tensor(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.array(a, copy=True))
        t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
        return t.float().div_(255.0)

    fp = _fingerprint(train_x, train_y, test_x, test_y)
    if subset is not None and subset.center:  # the normalization is part of what the models see
        fp = _fingerprint(np.frombuffer(fp.encode(), np.uint8), np.asarray(mean), np.asarray(std))
    tx, vx = to_tensor(train_x), to_tensor(test_x)
    return DatasetBundle(
        name=name,
        train=TensorDataset(tx, torch.as_tensor(np.array(train_y), dtype=torch.long)),
        test=TensorDataset(vx, torch.as_tensor(np.array(test_y), dtype=torch.long)),
        classes=list(classes),
        channels=tx.shape[1],
        size=tx.shape[-1],
        mean=tuple(mean),
        std=tuple(std),
        fingerprint=fp,
    )


@attrs.frozen
class Subset:
    """Some images of some classes of a data set: the first ``per_class`` training images (in the
    data set's order) of each of ``classes`` (labels renumbered 0, 1, ... in that order), and every
    test image of those classes; ``center``: the models see the images minus the chosen training
    images' mean (per channel, std 1), as the max-margin reconstructions of Haim et al. do."""

    classes: tuple[int, ...] = ()
    per_class: int = 0
    center: bool = False

    @property
    def active(self) -> bool:
        return bool(self.classes or self.per_class or self.center)

    def apply(self, name, train_x, train_y, test_x, test_y, class_names, mean, std):
        train_y, test_y = np.asarray(train_y), np.asarray(test_y)
        chosen = list(self.classes) or list(range(len(class_names)))
        bad = [c for c in chosen if not 0 <= c < len(class_names)]
        if bad or len(set(chosen)) != len(chosen):
            raise DatasetError(
                f"{name}: classes: distinct class indices in 0..{len(class_names) - 1} expected, got {list(chosen)}"
            )
        keep_train, keep_test = [], []
        for c in chosen:
            members = np.flatnonzero(train_y == c)
            if self.per_class > len(members):
                raise DatasetError(f"{name}: per_class = {self.per_class}, but class {c} has {len(members)} images")
            keep_train.append(members[: self.per_class] if self.per_class else members)
            keep_test.append(np.flatnonzero(test_y == c))
        remap = np.zeros(len(class_names), dtype=np.int64)
        remap[chosen] = np.arange(len(chosen))
        tr, te = np.concatenate(keep_train), np.concatenate(keep_test)
        train_x, train_y, test_x, test_y = train_x[tr], remap[train_y[tr]], test_x[te], remap[test_y[te]]
        if self.center:
            pixels = train_x.reshape(len(train_x), -1, 1 if train_x.ndim == 3 else train_x.shape[-1])
            mean, std = tuple(float(m) for m in pixels.mean(axis=(0, 1)) / 255.0), (1.0,) * pixels.shape[-1]
        return train_x, train_y, test_x, test_y, [class_names[c] for c in chosen], mean, std


def _subset(classes, per_class, center) -> Subset:
    if isinstance(classes, (str, bytes)) or not all(
        isinstance(c, int) and not isinstance(c, bool) for c in (classes or [])
    ):
        raise ValueError(f"classes: a list of class indices expected, got {classes!r}")
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 0:
        raise ValueError(f"per_class: an integer of at least 0 expected (0: every image), got {per_class!r}")
    if not isinstance(center, bool):
        raise ValueError(f"center: true or false expected, got {center!r}")
    return Subset(tuple(classes or ()), per_class, center)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST format), gzip-compressed or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise DatasetError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DatasetError(f"{path}: truncated IDX file ({body.size} of {int(np.prod(dims))} values)")
    return body.reshape(dims)


def _find_idx(root: Path, stem: str) -> Path | None:
    for candidate in (root / stem, root / f"{stem}.gz", root / "FashionMNIST" / "raw" / stem):
        if candidate.exists():
            return candidate
    return None


def fashion_mnist(
    root: str = "", download: bool = False, classes: list[int] | None = None, per_class: int = 0, center: bool = False
) -> DatasetBundle:
    """Fashion-MNIST (28x28 grey images, 10 classes), from its IDX files.

    :param classes: keep only these classes (indices, renumbered 0, 1, ... in this order); empty: all.
    :param per_class: keep the first this many training images of each class (0: all of them);
        the test split keeps every image of the kept classes.
    :param center: subtract the kept training images' mean pixel (the models' normalization
        becomes mean = that mean, std = 1): mean-subtracted inputs, as for the max-margin theory.
    """
    subset = _subset(classes, per_class, center)
    roots = [Path(root)] if root else [FASHION_MNIST_DEBIAN]
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    for r in roots:
        paths = [p for p in (_find_idx(r, s) for s in stems) if p is not None]
        if len(paths) == len(stems):
            train_x, train_y, test_x, test_y = (read_idx(p) for p in paths)
            return _bundle_from_arrays(
                "fashion-mnist", train_x, train_y, test_x, test_y, FASHION_MNIST_CLASSES, (0.2860,), (0.3530,), subset
            )
    if download:
        import torchvision

        target = Path(root or "data")
        train = torchvision.datasets.FashionMNIST(str(target), train=True, download=True)
        test = torchvision.datasets.FashionMNIST(str(target), train=False, download=True)
        return _bundle_from_arrays(
            "fashion-mnist",
            train.data.numpy(),
            train.targets.numpy(),
            test.data.numpy(),
            test.targets.numpy(),
            FASHION_MNIST_CLASSES,
            (0.2860,),
            (0.3530,),
            subset,
        )
    raise DatasetError(
        f"fashion-mnist: IDX files not found in {', '.join(map(str, roots))}; install them with "
        "`apt-get install -y dataset-fashion-mnist`, give data.root, or set data.download = true"
    )


def digits(
    root: str = "",
    download: bool = False,
    test_fraction: float = 0.2,
    classes: list[int] | None = None,
    per_class: int = 0,
    center: bool = False,
) -> DatasetBundle:
    """scikit-learn's 8x8 digits (ships with scikit-learn), split by a fixed permutation.

    :param test_fraction: the fraction of the images held out as the test split.
    :param classes: keep only these classes (indices, renumbered 0, 1, ... in this order); empty: all.
    :param per_class: keep the first this many training images of each class (0: all of them).
    :param center: subtract the kept training images' mean pixel (mean = that mean, std = 1).
    """
    subset = _subset(classes, per_class, center)
    if root:
        raise ValueError(f"root: digits ships with scikit-learn and reads no folder; remove data.root ({root!r})")
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(d.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(images))
    n_test = int(round(len(images) * test_fraction))
    test_idx, train_idx = order[:n_test], order[n_test:]
    return _bundle_from_arrays(
        "digits",
        images[train_idx],
        d.target[train_idx],
        images[test_idx],
        d.target[test_idx],
        [str(i) for i in range(10)],
        (0.3,),
        (0.4,),
        subset,
    )


def _torchvision_arrays(cls_name: str, root: str, download: bool, split_kw):
    import torchvision

    if not root:
        raise DatasetError(f"{cls_name.lower()}: give data.root (the folder holding the data set)")
    cls = getattr(torchvision.datasets, cls_name)
    try:
        train, test = cls(root, download=download, **split_kw[0]), cls(root, download=download, **split_kw[1])
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise DatasetError(f"{cls_name.lower()}: {exc} (root {root}; set data.download = true to fetch it)") from None
    return train, test


def cifar10(root: str = "", download: bool = False) -> DatasetBundle:
    train, test = _torchvision_arrays("CIFAR10", root, download, ({"train": True}, {"train": False}))
    return _bundle_from_arrays(
        "cifar10",
        train.data,
        np.array(train.targets),
        test.data,
        np.array(test.targets),
        train.classes,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    )


def cifar100(root: str = "", download: bool = False) -> DatasetBundle:
    train, test = _torchvision_arrays("CIFAR100", root, download, ({"train": True}, {"train": False}))
    return _bundle_from_arrays(
        "cifar100",
        train.data,
        np.array(train.targets),
        test.data,
        np.array(test.targets),
        train.classes,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
    )


def svhn(root: str = "", download: bool = False) -> DatasetBundle:
    train, test = _torchvision_arrays("SVHN", root, download, ({"split": "train"}, {"split": "test"}))
    return _bundle_from_arrays(
        "svhn",
        train.data.transpose(0, 2, 3, 1),
        train.labels,
        test.data.transpose(0, 2, 3, 1),
        test.labels,
        [str(i) for i in range(10)],
        (0.4377, 0.4438, 0.4728),
        (0.1980, 0.2010, 0.1970),
    )


def imagefolder(root: str = "", download: bool = False, size: int = 64, test_root: str = "") -> DatasetBundle:
    """A folder with one sub-folder of images per class (torchvision's ImageFolder layout).

    :param size: the side the images are resized and centre-cropped to.
    :param test_root: a folder of the same layout for the test split; empty: the training images.
    """
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    if not root or not Path(root).is_dir():
        raise DatasetError(f"imagefolder: data.root must be a folder of class sub-folders, got {root!r}")
    tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor()])
    train = ImageFolder(root, transform=tf)
    test = ImageFolder(test_root, transform=tf) if test_root else train
    h = hashlib.sha256()
    for path, label in train.samples:
        st = Path(path).stat()
        h.update(f"{path}|{label}|{st.st_size}|{st.st_mtime_ns}".encode())
    return DatasetBundle(
        name="imagefolder",
        train=train,
        test=test,
        classes=list(train.classes),
        channels=3,
        size=size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        fingerprint=h.hexdigest()[:16],
    )


@hookimpl
def dsv_register_datasets(registry):
    registry.add("fashion-mnist", fashion_mnist)
    registry.add("digits", digits)
    registry.add("cifar10", cifar10)
    registry.add("cifar100", cifar100)
    registry.add("svhn", svhn)
    registry.add("imagefolder", imagefolder)
