"""Augmented images per second: our batched tensor pipeline vs the usual per-image PIL pipeline.

Both produce the same augmentation (``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``,
``RandomRotation(15)``, normalisation) as float32 batches of ``--batch-size`` on the device:

- ours: uint8 images resident on the device, ``TensorLoader`` + ``BatchAugment`` (one fused
  ``grid_sample`` per batch), run with ``torch.set_num_threads(--threads)``;
- PIL: a ``torch.utils.data.DataLoader`` over a Dataset of PIL images with the torchvision
  transforms, ``num_workers=--threads`` (persistent; 0 workers when ``--threads 1``), then
  ``.to(device)``.

One repeat is one full pass over ``--n-images`` for each pipeline, alternating (so background
load hits both alike); we report the median over ``--repeats`` after ``--warmup`` passes.
Results go to ``benchmarks/results/data_pipeline_<device>.{json,md}``.

Run it on a quiet machine; the JSON records how busy the CPUs were. When other processes share
the cores, torch's intra-op threads (GNU OpenMP spin-waiting) can collapse to a few thousand
images/s; ``OMP_WAIT_POLICY=PASSIVE`` or ``--threads 1`` avoids that.

    python benchmarks/data_pipeline.py --n-images 10000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import conditions, device_name, interleaved

from condattn.data import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    BatchAugment,
    TensorLoader,
    load_cifar100,
    synthetic_cifar100,
)

RESULTS = Path(__file__).resolve().parent / "results"


class PILDataset(torch.utils.data.Dataset):
    """PIL images + labels with a per-image transform (the classic torchvision setup)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        from PIL import Image

        hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.images = [Image.fromarray(img) for img in hwc]
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def _time_interleaved(passes: dict, *, n: int, warmup: int, repeats: int, device) -> dict:
    """One full pass of each pipeline per round, alternating (``_common.interleaved``), so that
    load from other processes hits both pipelines alike. Returns images/s per pipeline and round."""
    res = interleaved(passes, device=device, warmup=warmup, repeats=repeats)
    return {name: [n / t for t in r["times_s"]] for name, r in res.items()}


def make_ours(images, labels, *, batch_size, device):
    """One pass = one epoch of TensorLoader + BatchAugment (a fresh epoch each time)."""
    loader = TensorLoader(
        images, labels, batch_size=batch_size, augment=BatchAugment(), seed=0, device=device
    )
    epoch = iter(range(10**9))

    def run_pass() -> None:
        batch = None
        for batch in loader.epoch(next(epoch)):  # noqa: B007 - consuming is the work
            pass
        assert batch is not None and batch[0].dtype == torch.float32

    return run_pass


def pil_loader(images, labels, *, batch_size, device, workers, drop_last=False):
    """A shuffling DataLoader over PIL images with the standard torchvision transforms (random
    crop with padding 4, flip, rotation in [-15, 15], ToTensor, Normalize): the plain pipeline
    that ours is compared with here and in ``loop_vs_reference.py``."""
    from torchvision import transforms

    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.RandomRotation(15),
            transforms.ToTensor(),
            transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD),
        ]
    )
    return torch.utils.data.DataLoader(
        PILDataset(images, labels, transform),
        batch_size=batch_size,
        shuffle=True,
        drop_last=drop_last,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )


def make_pil(images, labels, *, batch_size, device, workers):
    """One pass = one epoch of :func:`pil_loader`."""
    loader = pil_loader(images, labels, batch_size=batch_size, device=device, workers=workers)

    def run_pass() -> None:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        assert x.dtype == torch.float32

    return run_pass


def _busy_fraction(seconds: float = 1.0) -> float | None:
    """Fraction of all CPUs busy over ``seconds`` (from /proc/stat; None where unavailable).

    Sampled while this script is idle, so it measures the other processes on the machine.
    """

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def _fmt_busy(busy: float | None) -> str:
    return "n/a" if busy is None else f"{100 * busy:.0f}%"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-images", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads for ours; DataLoader workers for PIL",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", default=None, help="CIFAR-100 root (default: synthetic images)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    workers = args.threads if args.threads > 1 else 0
    if args.data:
        data = load_cifar100(args.data)
        images, labels = data.train_images[: args.n_images], data.train_labels[: args.n_images]
        source = data.source
    else:
        data = synthetic_cifar100(n_train=args.n_images, n_test=1, num_classes=100, seed=0)
        images, labels, source = data.train_images, data.train_labels, data.source
    n = len(images)
    load_before, busy_before = os.getloadavg()[0], _busy_fraction()
    batch = args.batch_size
    rates = _time_interleaved(
        {
            "ours": make_ours(images, labels, batch_size=batch, device=device),
            "pil": make_pil(images, labels, batch_size=batch, device=device, workers=workers),
        },
        n=n,
        warmup=args.warmup,
        repeats=args.repeats,
        device=device,
    )
    ours, pil = rates["ours"], rates["pil"]
    load_after, busy_after = os.getloadavg()[0], _busy_fraction()
    ours_med, pil_med = statistics.median(ours), statistics.median(pil)
    dev_name = device_name(device)
    result = {
        "benchmark": "data_pipeline",
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        **conditions(device),  # device, torch, python, host, git SHA, time, load
        "cpu": device_name(torch.device("cpu")),
        "threads": args.threads,
        # GNU OpenMP spin-waits by default; on a shared machine OMP_WAIT_POLICY=PASSIVE (set
        # before Python starts) keeps intra-op threads from collapsing (see the module docstring).
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "ours_setup": f"TensorLoader+BatchAugment, torch.set_num_threads({args.threads})",
        "pil_setup": f"DataLoader(num_workers={workers}, persistent) + torchvision PIL transforms",
        "data": source,
        # Other processes on the same cores distort both numbers (intra-op threads most): the
        # CPU busy fraction in the idle second before and after says whether the machine was
        # quiet (the 1-minute load average lags, so it is only kept for reference).
        "cpu_busy_before_after": [busy_before, busy_after],
        "loadavg_1min_before_after": [load_before, load_after],
        "n_images": n,
        "batch_size": args.batch_size,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "ours_img_per_s": ours,
        "pil_img_per_s": pil,
        "ours_median": ours_med,
        "pil_median": pil_med,
        "ratio": ours_med / pil_med,
    }
    try:
        import torchvision

        result["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover - torchvision is a dependency
        pass

    print(
        f"device {device} ({dev_name}), torch {torch.__version__}, threads {args.threads} "
        f"(PIL workers {workers}), batch {args.batch_size}, n {n}, "
        f"warmup {args.warmup}, repeats {args.repeats}"
    )
    print(f"ours (batched tensor): median {ours_med:10.0f} img/s  all {[round(r) for r in ours]}")
    print(f"PIL (per image):       median {pil_med:10.0f} img/s  all {[round(r) for r in pil]}")
    print(f"ratio ours/PIL: {result['ratio']:.1f}x")
    busy = [b for b in (busy_before, busy_after) if b is not None]
    print(
        f"CPU busy (other processes) before/after: {_fmt_busy(busy_before)} / "
        f"{_fmt_busy(busy_after)}; 1-min load average {load_before:.2f} / {load_after:.2f}"
    )
    if (busy and max(busy) > 0.1) or (not busy and load_before > (os.cpu_count() or 1) / 2):
        print("warning: other processes were busy on this machine; the numbers are unreliable")

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"data_pipeline_{device.type}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(
        f"# data_pipeline ({device.type})\n\n"
        f"`{result['command']}` on {dev_name}, torch {torch.__version__}, "
        f"{result['time']}. Data: {source}. {n} images, batch {args.batch_size}, "
        f"median of {args.repeats} passes after {args.warmup} warm-up. CPU busy with other "
        f"processes before/after: {_fmt_busy(busy_before)}/{_fmt_busy(busy_after)}.\n\n"
        "| pipeline | setup | median img/s |\n|---|---|---:|\n"
        f"| ours (batched tensor) | {result['ours_setup']} | {ours_med:.0f} |\n"
        f"| torchvision PIL | {result['pil_setup']} | {pil_med:.0f} |\n"
        f"| **ratio** | | **{result['ratio']:.1f}x** |\n"
    )
    return result


if __name__ == "__main__":
    main()
