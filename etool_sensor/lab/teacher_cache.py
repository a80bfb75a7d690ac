"""Train the teachers of every evaluation split (and of all data) in one run and keep their logits.

Meant for one run on an accelerator (the full-depth SmolLM2 teacher is slow on CPU); `etool-sensor eval
--teacher-cache DIR` and the student's distillation then read the logits instead of retraining:

    python -m etool_sensor.lab.teacher_cache --dataset flows.pkl --out DIR [--device cuda]
           [--columns category,app] [--splits iid,capture,unseen_app,shifted] [--layers 30]

`flows.pkl` is a pickled LabelledSet (train/data.py) of every matched flow; the splits are made on its
encrypted flows exactly as lab.splits.make_splits makes them from the same seed. Writes
teacher_<column>_<split>.npz and encoder_only_<column>_<split>.npz (logits on every flow of the data set,
keyed by flow identity), teacher_<column>_all.npz (a teacher trained on every flow, for the shipped
student) and summary.json (times, device, settings).
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    from ..train.teacher import TeacherConfig, train_teacher
    from ..train.teacher_logits import save_teacher_logits, training_key
    from .splits import SPLITS, make_splits, relabel

    p = argparse.ArgumentParser()
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--columns", default="category,app")
    p.add_argument("--splits", default=",".join(SPLITS))
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--ssl-epochs", type=float, default=3.0)
    p.add_argument("--all-epochs", type=int, default=12, help="epochs of the teachers trained on every flow")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", default="teacher,encoder_only")
    p.add_argument("--budget", type=float, default=480.0, help="stop starting new trainings after this many s")
    a = p.parse_args(argv)
    t_start = time.time()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    with open(a.dataset, "rb") as f:
        full = pickle.load(f)
    enc = full.subset([i for i, e in enumerate(full.encrypted) if e])
    summary: dict = {"device": a.device, "gpu": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else None,
                     "layers": a.layers, "epochs": a.epochs, "ssl_epochs": a.ssl_epochs, "seed": a.seed,
                     "flows": len(full), "encrypted_flows": len(enc), "runs": {}}
    variants = a.variants.split(",")

    def cfg(use_llm: bool, epochs: int) -> TeacherConfig:
        return TeacherConfig(llm_layers=a.layers, epochs=epochs, ssl_epochs=a.ssl_epochs, use_llm=use_llm,
                             ssl_max_flows=8000)

    def one(name: str, train, everything, column: str, use_llm: bool, epochs: int | None = None) -> None:
        if time.time() - t_start > a.budget:
            summary["runs"][name] = {"skipped": "budget"}
            log(f"cache: {name} skipped (budget)")
            return
        t0 = time.time()
        try:
            t = train_teacher(train, label_column=column, device=a.device, seed=a.seed, config=cfg(use_llm, epochs or a.epochs), log=log)
            save_teacher_logits(out / f"{name}.npz", everything, t, training_key(train))
            h = t.history
            summary["runs"][name] = {"train_flows": len(train), "seconds": round(time.time() - t0, 1),
                                     "epoch_s": h.get("epoch_s"), "ssl_epoch_s": h.get("ssl_epoch_s"),
                                     "ssl_acc": h.get("ssl_acc"), "final_loss": (h.get("loss") or [None])[-1]}
        except Exception as e:  # keep going: the other splits' logits are still worth having
            import traceback

            traceback.print_exc()
            summary["runs"][name] = {"error": f"{type(e).__name__}: {e}"}
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        log(f"cache: {name} done in {time.time() - t0:.0f}s (total {time.time() - t_start:.0f}s)")

    for column in a.columns.split(","):
        ds = relabel(enc, column)
        splits = make_splits(ds, a.splits.split(","), a.seed)
        for sname, sp in splits.items():
            col = sp["label"] or column
            if sp["label"] and sp["label"] != column and column != a.columns.split(",")[0]:
                continue  # unseen_app asks for the category whatever the column: train it once
            d = relabel(enc, col)
            for v in variants:
                one(f"{v}_{col}_{sname}", d.subset(sp["train"]), d, col, v == "teacher")
    for column in a.columns.split(","):
        d = relabel(full, column)
        one(f"teacher_{column}_all", d, d, column, True, epochs=a.all_epochs)
    summary["total_s"] = round(time.time() - t_start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
