"""int8 quantisation of an exported model (static, calibrated: the default; or dynamic) and parity checks."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np


#: What the manifest says of a package's quantisation (package.py writes it, fuse.py after fusing).
STATIC_INT8_UNFUSED = "int8-static (QLinearMatMul on weight MatMuls, MinMax calibration on real flows)"
STATIC_INT8 = ("int8-static (weight MatMuls as uint8 x int8 products with float outputs, MinMax-calibrated "
               "activation scales on real flows; QAttention)")


def weight_matmuls(path: str | Path) -> list[str]:
    """Names of MatMul/Gemm nodes whose second input is a weight (initializer).

    Activation x activation products (attention scores) stay fp32: quantising them dynamically costs more
    than it saves at these sizes and hurts accuracy.
    """
    import onnx

    m = onnx.load(str(path))
    inits = {i.name for i in m.graph.initializer}
    return [n.name for n in m.graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1
            and n.input[1] in inits]


def quantize_int8(src: str | Path, dst: str | Path, *, per_channel: bool = False) -> Path:
    """Dynamic int8 (note: per-tensor activation scales make scores depend on the batch's other flows) (weights int8, activations quantised per batch at run time) of the weight MatMuls."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    nodes = weight_matmuls(src)
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic warns about pre-processing on every call
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                         nodes_to_quantize=nodes, op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        logging.getLogger().setLevel(level)
    return dst


class _Calib:
    """CalibrationDataReader over encoded flows (features.encode arrays), in batches."""

    def __init__(self, feats: dict[str, np.ndarray], names: list[str], batch: int = 256, limit: int = 4096) -> None:
        self.feats, self.names, self.batch = feats, names, batch
        self.n = min(limit, len(feats["pkt"]))
        self.i = 0

    def get_next(self):
        if self.i >= self.n:
            return None
        d = {k: np.ascontiguousarray(self.feats[k][self.i:self.i + self.batch]) for k in self.names}
        self.i += self.batch
        return d

    def rewind(self) -> None:
        self.i = 0


def quantize_static_int8(src: str | Path, dst: str | Path, calib: dict[str, np.ndarray]) -> Path:
    """Static int8 (QOperator: QLinearMatMul) of the weight MatMuls, activation ranges calibrated on real
    flows. Unlike dynamic quantisation, a flow's scores do not depend on the other flows of its batch,
    so the daemon (small batches) and `classify` (large batches) give identical verdicts.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    src, dst = Path(src), Path(dst)
    names = [i.name for i in onnx.load(str(src)).graph.input]
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        quantize_static(str(src), str(dst), _Calib(calib, names), quant_format=QuantFormat.QOperator,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=weight_matmuls(src),
                        calibrate_method=CalibrationMethod.MinMax, per_channel=False)
    finally:
        logging.getLogger().setLevel(level)
    return dst


def onnx_logits(path: str | Path, feats: dict[str, np.ndarray], *, threads: int = 1, batch: int = 1024
                ) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in s.get_inputs()]
    n = len(feats["pkt"])
    a, b = [], []
    for i in range(0, n, batch):
        o = s.run(["service_logits", "app_logits"], {k: feats[k][i:i + batch] for k in names})
        a.append(o[0])
        b.append(o[1])
    return np.concatenate(a), np.concatenate(b)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def parity(ref: tuple[np.ndarray, np.ndarray], got: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """Max abs logit difference, max abs probability difference and argmax agreement, per head."""
    out: dict[str, float] = {}
    for name, r, g in zip(("service", "app"), ref, got):
        out[f"{name}_max_abs_logit_diff"] = float(np.abs(r - g).max()) if len(r) else 0.0
        out[f"{name}_max_abs_prob_diff"] = float(np.abs(_softmax(r) - _softmax(g)).max()) if len(r) else 0.0
        out[f"{name}_argmax_agreement"] = float((r.argmax(1) == g.argmax(1)).mean()) if len(r) else 1.0
    return out
