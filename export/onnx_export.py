"""torch StudentClassifier -> ONNX with a dynamic batch axis (opset 17, TorchScript exporter).

The graph takes the arrays of etool_sensor.features.encode() by name (pkt, byt, seg, ctx, meta[, port])
and returns `service_logits` [B, n_service] and `app_logits` [B, n_app].
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from etool_sensor.train.model import StudentClassifier, input_names

OPSET = 17
OUTPUTS = ["service_logits", "app_logits"]


class _Wrapped(torch.nn.Module):
    """Fixes the positional signature the exporter sees (port, hello, flt only when the model uses them)."""

    def __init__(self, m: StudentClassifier) -> None:
        super().__init__()
        self.m = m

    def forward(self, *xs):
        return self.m(*xs)


def dummy_inputs(model: StudentClassifier, batch: int = 2) -> dict[str, torch.Tensor]:
    c = model.encoder.c
    from etool_sensor.context import CONTEXT_SIZES
    nb = c.payload_packets * c.payload_bytes
    d = {
        "pkt": torch.zeros(batch, c.packets, 4, dtype=torch.long),
        "byt": torch.zeros(batch, nb, dtype=torch.long),
        "seg": torch.zeros(batch, nb, dtype=torch.long),
        "ctx": torch.zeros(batch, c.context, 3 + CONTEXT_SIZES),
        "meta": torch.zeros(batch, 4),
    }
    d["pkt"][:, 0, 0] = 1
    if c.use_ports:
        d["port"] = torch.zeros(batch, dtype=torch.long)
    if c.flights:
        d["flt"] = torch.zeros(batch, 2 * c.flights)
    return d


def export_onnx(model: StudentClassifier, path: str | Path, *, opset: int = OPSET) -> Path:
    """Write `model` (eval mode, CPU) to `path`; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    names = input_names(model.encoder.c)
    dummy = dummy_inputs(model)
    args = tuple(dummy[n] for n in names)
    axes = {n: {0: "batch"} for n in names + OUTPUTS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Wrapped(model), args, str(path), input_names=names, output_names=OUTPUTS,
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)
    return path


def torch_logits(model: StudentClassifier, feats: dict[str, np.ndarray], batch: int = 1024
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Reference logits from the torch model for the same feature arrays (for parity checks)."""
    model = model.cpu().eval()
    names = input_names(model.encoder.c)
    n = len(feats["pkt"])
    outs_s, outs_a = [], []
    with torch.no_grad():
        for i in range(0, n, batch):
            xs = [torch.from_numpy(np.ascontiguousarray(feats[k][i:i + batch])) for k in names]
            s, a = model(*xs)
            outs_s.append(s.numpy())
            outs_a.append(a.numpy())
    return np.concatenate(outs_s), np.concatenate(outs_a)
