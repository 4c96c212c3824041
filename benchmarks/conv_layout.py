"""Training-step time of the image encoders with channels-first against channels-last input, side by side.

Why the Nature CNN and the ResNet feed their convs channels-last batches on the CPU (rl_lab.backbone.encoders.
channels_last_on_cpu) and VGG and LeNet do not. Each case times forward + backward of the encoder's layers on one
batch, the two layouts alternating, after one warm-up step each; the ratio is channels-first time / channels-last
time (above 1: channels-last is faster). One torch thread unless `--threads`.

    .venv/bin/python benchmarks/conv_layout.py --repeats 20 --out docs/conv_layout.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from rl_lab.backbone import EncoderSpec, build_encoder

CASES = {  # name: (encoder spec, batch) — the batches the lab's configs train on
    "nature_cnn 84x84 (pong_ppo, PPO minibatch)": (EncoderSpec("nature_cnn", (4, 84, 84), {}), 256),
    "nature_cnn 84x84 (DQN batch)": (EncoderSpec("nature_cnn", (4, 84, 84), {}), 32),
    "nature_cnn 42x42 (pong_ppo_fast)": (
        EncoderSpec("nature_cnn", (4, 42, 42), {"features": 256, "convs": [[16, 8, 4], [32, 4, 2]]}),
        256,
    ),
    "nature_cnn 10x10 (MinAtar DQN)": (
        EncoderSpec("nature_cnn", (4, 10, 10), {"features": 128, "convs": [[16, 3, 1]]}),
        32,
    ),
    "resnet 32x32": (EncoderSpec("resnet", (3, 32, 32), {}), 128),
    "vgg 32x32": (EncoderSpec("vgg", (3, 32, 32), {}), 128),
    "lenet 28x28": (EncoderSpec("lenet", (1, 28, 28), {}), 128),
}


def step_seconds(layers: torch.nn.Module, batch: torch.Tensor) -> float:
    start = time.perf_counter()
    layers.zero_grad()
    layers(batch).sum().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for name, (spec, batch_size) in CASES.items():
        torch.manual_seed(0)
        layers = build_encoder(spec).net  # the encoder's own layers, fed each layout as given
        first = torch.rand(batch_size, *spec.input_shape)
        last = first.contiguous(memory_format=torch.channels_last)
        times = {"channels_first": [], "channels_last": []}
        for batch in (first, last):
            step_seconds(layers, batch)  # warm-up
        for _ in range(args.repeats):
            for layout, batch in (("channels_first", first), ("channels_last", last)):
                times[layout].append(step_seconds(layers, batch))
        medians = {layout: float(np.median(t)) for layout, t in times.items()}
        ratio = medians["channels_first"] / medians["channels_last"]
        results[name] = {"batch": batch_size, "median_ms": {k: v * 1000 for k, v in medians.items()}, "ratio": ratio}
        print(
            f"{name:45s} batch {batch_size:4d}  first {medians['channels_first'] * 1000:8.1f} ms  "
            f"last {medians['channels_last'] * 1000:8.1f} ms  ratio {ratio:.2f}",
            flush=True,
        )
    if args.out:
        record = {
            "command": f".venv/bin/python benchmarks/conv_layout.py --repeats {args.repeats} --threads {args.threads}",
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "load_before": os.getloadavg()[0],
            "threads": args.threads,
            "cases": results,
        }
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
