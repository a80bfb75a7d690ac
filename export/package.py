"""Model packages: model.onnx (int8 by default) + manifest.json, with parity recorded in the manifest.

manifest.json:
  name, version, schema_version (flow record contract), features (FeatureSpec.to_dict()),
  label_sets {"service": [...], "app": [...]}, inputs, outputs {"service", "app", "kind"},
  sha256 (of model.onnx), quantization, architecture {config, tokens, macs, flops, params},
  token_granules {input: multiple its token axis may be cut to} (export/token_axes.py),
  simplified {rewrite: times applied} (export/simplify.py), fused {rewrite: times applied} (export/fuse.py),
  parity {fp32_vs_torch, int8_vs_torch, simplified_vs_previous, fused {previous_vs_reference,
  fused_vs_reference, fused_vs_previous}, cut_vs_full (the shipped graph, cut, simplified and fused, vs the
  full int8 one)}, training {data, flows, pcaps, hardware, seconds, teacher, date, ...}
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from etool_sensor.flows import SCHEMA_VERSION
from etool_sensor.runtime import MANIFEST, MODEL_FILE, sha256_file

from .onnx_export import OUTPUTS, export_onnx, torch_logits
from .quantize import STATIC_INT8, STATIC_INT8_UNFUSED, onnx_logits, parity, quantize_int8, quantize_static_int8
from .fuse import check_closer, closeness, fuse_graph
from .simplify import check_agreement, simplify_graph
from .token_axes import cut_logits, granules, make_token_axes_dynamic

QUANT_MODES = ("static", "dynamic", "none")


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out = f"{cpu}, {n} cores"
    try:
        import torch
        if torch.cuda.is_available():
            out += f", {torch.cuda.get_device_name(0)}"
    except Exception:  # pragma: no cover
        pass
    return out



def _fuse(simple: Path, dst: Path, gran: dict[str, int], check_feats: dict[str, np.ndarray] | None,
          ref: tuple[np.ndarray, np.ndarray] | None, par: dict[str, Any]) -> tuple[Path, dict[str, int]]:
    """export/fuse.py on a static-int8 export: the fused graph and its rewrites if it is at least as close to
    the torch model as the simplified one on the check flows (or when there are none to check on), else the
    simplified graph and no rewrites, with the reason in par["fused"]."""
    done = fuse_graph(simple, dst)
    if ref is None:
        return dst, done
    n = len(check_feats["pkt"])  # type: ignore[index]
    before, after = cut_logits(simple, check_feats, gran), cut_logits(dst, check_feats, gran)  # type: ignore[arg-type]
    par["fused"] = {"flows": n, "reference": "torch", "previous_vs_reference": closeness(ref, before),
                    "fused_vs_reference": closeness(ref, after), "fused_vs_previous": parity(before, after)}
    try:
        check_closer(par["fused"]["previous_vs_reference"], par["fused"]["fused_vs_reference"], n, "build_package")
    except ValueError as e:
        par["fused"]["kept_previous"] = str(e)
        return simple, {}
    return dst, done


def build_package(student: Any, out_dir: str | Path, *, name: str = "etool-student", version: str = "0.1.0",
                  training: dict[str, Any] | None = None, check_feats: dict[str, np.ndarray] | None = None,
                  quantize: bool | str = "static", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export `student` (train.student.Student) to `out_dir`; return the manifest.

    check_feats: encoded real flows, used to calibrate static int8 and for the parity check (torch vs ONNX
    fp32 vs int8), which the manifest records. quantize: "static" (int8, calibrated on check_feats;
    batch-independent), "dynamic" (int8, activation scales per batch) or "none"/False (fp32).
    """
    mode = "static" if quantize is True else ("none" if quantize is False else quantize)
    if mode not in QUANT_MODES:
        raise ValueError(f"quantize must be one of {QUANT_MODES}, got {quantize!r}")
    if mode == "static" and (check_feats is None or not len(check_feats["pkt"])):
        mode = "dynamic"  # nothing to calibrate on
    from etool_sensor.train.model import flops_per_flow, input_names

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = student.model.cpu().eval()
    cfg = student.config
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx")
        if mode == "static":
            final = quantize_static_int8(fp32, Path(tmp) / "int8.onnx", check_feats)
        elif mode == "dynamic":
            final = quantize_int8(fp32, Path(tmp) / "int8.onnx")
        else:
            final = fp32
        gran = granules(cfg.to_dict())
        cut = make_token_axes_dynamic(final, Path(tmp) / "cut.onnx", gran)
        simple = Path(tmp) / "simple.onnx"
        simplified = simplify_graph(cut, simple)
        par: dict[str, Any] = {}
        ref = None
        if check_feats is not None and len(check_feats["pkt"]):
            ref = torch_logits(model, check_feats)
            par["flows"] = int(len(check_feats["pkt"]))
            par["fp32_vs_torch"] = parity(ref, onnx_logits(fp32, check_feats))
            full = onnx_logits(final, check_feats)
            if mode != "none":
                par["int8_vs_torch"] = parity(ref, full)
            before = cut_logits(cut, check_feats, gran)
            par["simplified_vs_previous"] = sp = parity(before, cut_logits(simple, check_feats, gran))
            check_agreement(sp, par["flows"], "build_package")
        shipped, fused = simple, {}
        if mode == "static":
            shipped, fused = _fuse(simple, Path(tmp) / "fused.onnx", gran, check_feats, ref, par)
        if "flows" in par:
            par["cut_vs_full"] = parity(full, cut_logits(shipped, check_feats, gran))
        shutil.copyfile(shipped, out / MODEL_FILE)
    fl = flops_per_flow(cfg, len(student.label_sets["service"]), len(student.label_sets["app"]))
    members = len(getattr(model, "members", [model]))  # an ensemble runs every member on every flow
    fl = {**fl, "macs": fl["macs"] * members, "flops": fl["flops"] * members, "members": members}
    manifest: dict[str, Any] = {
        "name": name,
        "version": version,
        "schema_version": SCHEMA_VERSION,
        "features": student.spec.to_dict(),
        "label_sets": {"service": list(student.label_sets["service"]), "app": list(student.label_sets["app"])},
        "label_column": student.label_column,
        "inputs": input_names(cfg),
        "outputs": {"service": OUTPUTS[0], "app": OUTPUTS[1], "kind": "logits"},
        "token_granules": gran,
        "simplified": simplified,
        "fused": fused,
        "sha256": sha256_file(out / MODEL_FILE),
        "quantization": {"static": STATIC_INT8 if fused else STATIC_INT8_UNFUSED,
                         "dynamic": "int8-dynamic (weight MatMuls)", "none": "none (fp32)"}[mode],
        "architecture": {"type": "TrafficEncoder (pre-LN transformer) + linear heads", "config": cfg.to_dict(),
                         "params": int(sum(p.numel() for p in model.parameters())), **fl},
        "parity": par,
        "training": {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     "hardware": hardware(), **(training or {})},
    }
    if extra:
        manifest.update(extra)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


# ----------------------------------------------------------------------------------- etool-sensor export
def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="student checkpoint written by `train` (student.pt)")
    p.add_argument("--out", required=True, help="model package directory to write")
    p.add_argument("--name", default="etool-student")
    p.add_argument("--version", default="0.1.0")
    p.add_argument("--quantize", choices=QUANT_MODES, default="static",
                   help="int8 static (calibrated on the --check-data flows, default), int8 dynamic, or none (fp32)")
    p.add_argument("--check-data", help="capture directory whose flows are used for the parity check")
    p.add_argument("--check-labels", help="labels.csv naming the captures for the parity check")


def export_main(args: argparse.Namespace) -> int:
    from etool_sensor.features import encode
    from etool_sensor.train.student import Student

    if args.quantize == "static" and not (args.check_data and args.check_labels):
        print("export: --quantize static calibrates on real flows: give --check-data and --check-labels, or "
              "choose --quantize dynamic or none", file=sys.stderr)
        return 2
    if bool(args.check_data) != bool(args.check_labels):
        print("export: --check-data and --check-labels go together", file=sys.stderr)
        return 2
    st = Student.load(args.checkpoint)
    feats = None
    if args.check_data and args.check_labels:
        from etool_sensor.flows import FlowParams
        from etool_sensor.train.data import load_labelled
        sp = st.spec
        ls = load_labelled(args.check_data, args.check_labels,
                           params=FlowParams(sp.packets, sp.payload_bytes, sp.payload_packets))
        feats = encode(ls.records[:2000], ls.contexts[:2000], sp)
    m = build_package(st, args.out, name=args.name, version=args.version, check_feats=feats,
                      quantize=args.quantize, training=st.info.get("training", {}))
    print(f"wrote {args.out}/{MODEL_FILE} ({m['quantization']}), sha256 {m['sha256'][:16]}...")
    if m["parity"]:
        print(json.dumps(m["parity"], indent=1))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m etool_sensor.export.package")
    add_export_arguments(p)
    return export_main(p.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
