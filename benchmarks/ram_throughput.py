"""RAM training throughput in image-glimpses per second (target on CPU: >= 10,000), side by side in one run:

- full training steps (sensor, networks, hybrid loss, backward, Adam) for the shipped configs' models;
- the batched glimpse sensor against the same sensor called once per image (how a per-image env reads glimpses).

  python benchmarks/ram_throughput.py                 # CPU, one thread (as the configs run)
  python benchmarks/ram_throughput.py --device cuda --batch-size 256
"""

from __future__ import annotations

import argparse
import time

import torch

from rl_lab.agents.ram import RAM, RAMConfig, ram_losses
from rl_lab.ram.sensor import glimpse

MODELS = {  # name: (image side, RAMConfig kwargs), as in configs/ram_*.yaml
    "mnist 28x28, 8x8 x3, gru": (28, {"glimpse_size": 8, "scales": 3, "core": "gru"}),
    "mnist 28x28, 8x8 x3, rnn": (28, {"glimpse_size": 8, "scales": 3, "core": "rnn"}),
    "translated 60x60, 12x12 x3, gru": (60, {"glimpse_size": 12, "scales": 3, "core": "gru"}),
    "cluttered 100x100, 12x12 x4, gru": (100, {"glimpse_size": 12, "scales": 4, "core": "gru"}),
}


def timed(fn, seconds: float, device: torch.device) -> tuple[int, float, float]:
    """Call fn until `seconds` have passed (after two warm-up calls); returns (calls, wall seconds, CPU seconds).

    CPU seconds (this process's) tell what the code costs when other jobs share the cores: with one thread,
    calls / CPU seconds is about what an idle core would give."""
    for _ in range(2):
        fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    calls, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    sync()
    return calls, time.perf_counter() - start, time.process_time() - cpu


def train_throughput(side: int, kwargs: dict, glimpses: int, batch: int, seconds: float, device) -> tuple[float, float]:
    config = RAMConfig(glimpses=glimpses, **kwargs)
    model = RAM(config, (1, side, side), 10).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.randint(0, 256, (batch, 1, side, side), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)

    def step():
        losses = ram_losses(model(images.float() / 255), labels, config)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()

    calls, wall, cpu = timed(step, seconds, device)
    return calls * batch * glimpses / wall, calls * batch * glimpses / cpu


def sensor_throughput(side: int, kwargs: dict, batch: int, seconds: float, device) -> tuple[float, float]:
    images = torch.rand(batch, 1, side, side, device=device)
    locs = torch.rand(batch, 2, device=device) * 2 - 1
    args = (kwargs["glimpse_size"], kwargs["scales"], 2)  # the sensor alone: the core plays no part
    calls, _, cpu = timed(lambda: glimpse(images, locs, *args), seconds, device)
    batched = calls * batch / cpu
    calls, _, cpu = timed(
        lambda: [glimpse(images[i : i + 1], locs[i : i + 1], *args) for i in range(batch)], seconds, device
    )
    return batched, calls * batch / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the configs use 1)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--glimpses", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    print(f"device {device}, {args.threads} thread(s), batch {args.batch_size}, {args.glimpses} glimpses")
    print("training: image-glimpses per wall second and per CPU second; sensor: images per CPU second")
    print(
        f"{'model':<33} {'train /wall s':>14} {'train /CPU s':>13} {'vs 10k':>7} "
        f"{'sensor batched':>15} {'per image':>10} {'ratio':>6}"
    )
    for name, (side, kwargs) in MODELS.items():
        wall, cpu = train_throughput(side, kwargs, args.glimpses, args.batch_size, args.seconds, device)
        batched, single = sensor_throughput(side, kwargs, args.batch_size, args.seconds / 2, device)
        print(
            f"{name:<33} {wall:>14,.0f} {cpu:>13,.0f} {cpu / 1e4:>6.2f}x "
            f"{batched:>15,.0f} {single:>10,.0f} {batched / single:>5.0f}x"
        )


if __name__ == "__main__":
    main()
