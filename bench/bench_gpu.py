"""GPU throughput of the shipped student architecture in torch CUDA (issue: performance, item 4).

The device's onnxruntime has no CUDA provider and onnxruntime-gpu is too large to carry, so this times
the same architecture (config from the shipped manifest, random weights: throughput does not depend on
the values) in torch, fp32 and bf16 autocast, forward pass only, batch 1k..64k. For scale it also times
the anchors of the issue (4x256 and 2x128 encoders at 64 tokens) with torch's nn.TransformerEncoder.
Prints a table, each row also as a ratio to the first (the student, fp32, the first batch size) measured in the
same run; not a test. Usage: python bench/bench_gpu.py [--seconds 2] [--json OUT]

`--device cpu --batches 64 --seconds 0.2` is a dry run of the same code on the CPU (what to try before
spending device time; the numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import sys

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a bare checkout (the device) has no install

from etool_sensor.train.model import EncoderConfig, StudentClassifier, flops_per_flow  # noqa: E402

MANIFEST = Path(__file__).resolve().parents[1] / "etool_sensor" / "models" / "default" / "manifest.json"


def inputs(c: EncoderConfig, b: int, dev: str) -> list[torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(0)
    n, u = c.packets, c.payload_packets * c.payload_bytes
    pkt = torch.stack([torch.randint(1, 3, (b, n), generator=g), torch.randint(0, 96, (b, n), generator=g),
                       torch.randint(0, 32, (b, n), generator=g), torch.randint(0, 256, (b, n), generator=g)], -1)
    byt = torch.randint(0, 257, (b, u), generator=g)
    seg = torch.randint(1, 2 * c.payload_packets + 1, (b, u), generator=g)
    ctx = torch.randn(b, c.context, 11, generator=g)
    meta = torch.rand(b, 4, generator=g)
    return [t.to(dev) for t in (pkt, byt, seg, ctx, meta)]


def sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def timeit(fn, seconds: float, dev: str = "cuda") -> tuple[float, int]:
    fn()
    sync(dev)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    sync(dev)
    return (time.perf_counter() - t0) / n, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    a = ap.parse_args()
    dev = a.device
    if dev == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device (--device cpu for a dry run)")
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu (dry run)"
    m = json.loads(MANIFEST.read_text())
    cfg = {k: v for k, v in m["architecture"]["config"].items() if k in EncoderConfig.__dataclass_fields__}
    c = EncoderConfig(**cfg)
    model = StudentClassifier(c, len(m["label_sets"]["service"]), len(m["label_sets"]["app"])).to(dev).eval()
    fl = flops_per_flow(c, len(m["label_sets"]["service"]), len(m["label_sets"]["app"]))
    print(f"device: {name}  torch {torch.__version__}")
    print(f"student {c.layers}x{c.d}, {fl['tokens']} tokens, {fl['flops'] / 1e6:.2f} MFLOPs/flow")
    rows = []
    print(f"{'model':<22}{'batch':>8}{'dtype':>7}{'flows/s':>14}{'ms/batch':>10}{'x base':>8}")
    base = None  # the first row (the student, fp32, the first batch size): every row is a ratio to it too
    with torch.inference_mode():
        for b in a.batches:
            x = inputs(c, b, dev)
            for dtype in ("fp32", "bf16"):
                def run() -> None:
                    with torch.autocast(dev, torch.bfloat16, enabled=dtype == "bf16"):
                        model(*x)
                per, _ = timeit(run, a.seconds, dev)
                base = base or b / per
                rows.append({"model": "etool-student", "batch": b, "dtype": dtype, "flows_s": b / per,
                             "x_base": b / per / base})
                print(f"{'etool-student':<22}{b:>8}{dtype:>7}{b / per:>14,.0f}{per * 1e3:>10.2f}{b / per / base:>8.2f}")
        for name, layers, d in (("anchor 4x256 @64tok", 4, 256), ("anchor 2x128 @64tok", 2, 128)):
            enc = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(d, 4, 4 * d, batch_first=True),
                                              layers).to(dev).eval()
            b = max(a.batches) if dev == "cpu" else 16384
            x = torch.randn(b, 64, d, device=dev)
            def run2() -> None:
                with torch.autocast(dev, torch.bfloat16):
                    enc(x)
            per, _ = timeit(run2, a.seconds, dev)
            rows.append({"model": name, "batch": b, "dtype": "bf16", "flows_s": b / per, "x_base": b / per / base})
            print(f"{name:<22}{b:>8}{'bf16':>7}{b / per:>14,.0f}{per * 1e3:>10.2f}{b / per / base:>8.2f}")
    if a.json:
        a.json.write_text(json.dumps({"device": name, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
