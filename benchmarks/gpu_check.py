"""GPU check for the model code: train and serve a model on CUDA, print throughput.

Run on a machine with a GPU (``benchmarks/gpu_check.sh``); it is not part of CI. On a
machine without CUDA it runs the same steps on the CPU and says so, so the script itself
is checked anywhere. Steps:

1. features and labels from 200,000 synthetic one-minute bars (`trading.data.SyntheticSource`);
2. training a TCN (64 channels, 4 levels, lookback 64) for a fixed number of epochs on the
   device `models.training.train` picks: samples per second and the test metrics;
3. `LoadedModel.predict` on the device in batches of 1, 64 and 4,096 windows: windows/s;
4. the same model behind a one-replica Ray Serve deployment asking for one GPU
   (``num_gpus=1``; CPU when there is none), called through a handle: requests/s with 32
   in flight. Skipped, with a printed line saying why, under ``--no-serve`` or when
   ``ray`` cannot be imported (a GPU machine that has torch but not Ray).

    .venv/bin/python benchmarks/gpu_check.py [--bars 200000] [--epochs 3] [--no-serve]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.artifacts import load_artifact, save_artifact
from models.datasets import make_dataset, time_split
from models.features import FeatureSpec
from models.networks import build_network
from models.training import train, windows
from trading.data import SyntheticSource

LOOKBACK = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--no-serve", action="store_true", help="skip step 4 (Ray Serve)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "none (CPU run)"
    print(
        f"gpu check, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; torch {torch.__version__}, CUDA device: {device}"
    )

    start = datetime(2024, 1, 1, tzinfo=UTC)
    bars = list(SyntheticSource(seed=3).bars(["BTC-USD"], start, start + timedelta(minutes=args.bars)))
    spec = FeatureSpec()
    dataset = make_dataset(spec, bars, horizon=5, kind="direction")
    split = time_split(dataset)
    network = build_network("tcn", spec.n_features, LOOKBACK, "direction", seed=0, channels=64, levels=4)
    began = time.perf_counter()
    result = train(network, split, epochs=args.epochs, batch_size=1024, lr=1e-3, patience=args.epochs, seed=0)
    took = time.perf_counter() - began
    seen = result.epochs_run * result.samples["train"]
    print(
        f"training: {result.epochs_run} epochs x {result.samples['train']:,} windows on {result.device} in "
        f"{took:.1f} s = {seen / took:,.0f} windows/s; test {result.metrics}"
    )

    artifact = save_artifact(network, spec, horizon=5, metrics=result.metrics)
    model = load_artifact(artifact.blob, artifact.sha256)
    if cuda:
        model.network.to("cuda")
    features = windows(dataset.X[-(4096 + LOOKBACK) :], LOOKBACK)[-4096:]
    for batch in (1, 64, 4096):
        chunk = features[:batch]
        model.predict(chunk)  # warm
        runs, began = 0, time.perf_counter()
        while time.perf_counter() - began < 2.0:
            model.predict(chunk)
            runs += 1
        rate = runs * batch / (time.perf_counter() - began)
        print(
            f"predict on {next(model.network.parameters()).device}, batch {batch:>5}: "
            f"{rate:>12,.0f} windows/s"
        )

    if args.no_serve:
        print("serve: skipped (--no-serve)")
        return
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as error:
        print(f"serve: skipped, Ray Serve cannot be imported here ({error})")
        return
    serve_check(artifact.blob, artifact.sha256, features[:1].tolist(), cuda)


def serve_check(blob: bytes, sha256: str, window: list[Any], cuda: bool) -> None:
    import ray
    from ray import serve

    ray.init(address="local", include_dashboard=False, log_to_driver=False)

    @serve.deployment(
        ray_actor_options={"num_gpus": 1 if cuda else 0, "num_cpus": 0.5}, max_ongoing_requests=64
    )
    class OnDevice:
        def __init__(self) -> None:
            self.model = load_artifact(blob, sha256)
            if torch.cuda.is_available():
                self.model.network.to("cuda")

        async def predict(self, windows_: list[Any]) -> list[float]:
            return self.model.predict(np.asarray(windows_, dtype=np.float32)).tolist()

    try:
        handle = serve.run(OnDevice.bind(), name="gpu_check", route_prefix=None)

        async def load() -> float:
            done, stop = 0, time.perf_counter() + 5.0

            async def worker() -> None:
                nonlocal done
                while time.perf_counter() < stop:
                    await handle.predict.remote(window)
                    done += 1

            began = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(32)))
            return done / (time.perf_counter() - began)

        handle.predict.remote(window).result()  # warm
        print(
            f"serve (ray {ray.__version__}, {'GPU' if cuda else 'CPU'} replica), 32 in flight for 5 s: "
            f"{asyncio.run(load()):,.0f} req/s"
        )
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
