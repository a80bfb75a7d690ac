"""The adapt protocol of docs/adapt.md ("How well it works"): for each other-network set, split its captures into
two halves by file (fixed seed), adapt the base package on one half with that half's labels, score the other half
(encrypted flows: service macro-F1 over classes with >= 5 flows, accuracy), and the other way round. In the same
run it scores the base package and a random forest on the first 20 signed packet sizes (lab.baselines.SizeBaseline
"rf") trained on nDPI's set plus the adapting half, encrypted flows, the same labels.

    python bench/bench_adapt.py ../shared/data/more ../shared/data/zeek-traces [--ndpi ../shared/data/ndpi]

A set is a directory with labels.csv and its captures under pcap/ (or beside labels.csv). Each direction writes
the adapted package to a temporary directory and scores it through the runtime, as `classify` would. "pooled"
scores every encrypted flow of the set once, by the package adapted on the half it is not in.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from etool_sensor.lab.baselines import SizeBaseline  # noqa: E402
from etool_sensor.train import adapted_package, local_fit as A  # noqa: E402
from etool_sensor.runtime import load_model, model_window  # noqa: E402
from etool_sensor.train.data import load_labelled  # noqa: E402


def captures_root(d: Path) -> Path:
    return d / "pcap" if (d / "pcap").is_dir() else d


def halves(pcaps: list[str], seed: int) -> tuple[set[str], set[str]]:
    caps = sorted(set(pcaps))
    perm = np.random.default_rng(seed).permutation(len(caps))
    first = {caps[j] for j in perm[: len(caps) // 2]}
    return first, set(caps) - first


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sets", nargs="+", help="other-network set directories (labels.csv + captures)")
    ap.add_argument("--ndpi", default=str(Path(__file__).resolve().parents[2] / "shared/data/ndpi"),
                    help="nDPI's set, the forest baseline's base training data")
    ap.add_argument("--model", help="base package (default: the bundled default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--parts", action="store_true", help="also score each refitted part alone (tables, forest, "
                    "prior biases) and in pairs")
    a = ap.parse_args()
    t0 = time.time()
    model = load_model(a.model, threads=2)
    win = model_window(model.spec)
    nd = Path(a.ndpi)
    base_ds = load_labelled(captures_root(nd), nd / "labels.csv", encrypted_only=True, params=win,
                            on_error=lambda n, e: None)
    print(f"base {model.id}; forest baseline base data: {len(base_ds)} encrypted nDPI flows", file=sys.stderr)
    results = {}
    for sd in map(Path, a.sets):
        ds = load_labelled(captures_root(sd), sd / "labels.csv", params=win, on_error=lambda n, e: None)
        lf = A.local_flows(model, ds)
        first, second = halves(lf.pcap, a.seed)
        res: dict = {"flows": len(lf), "encrypted": int(lf.encrypted.sum()), "captures": len(set(lf.pcap))}
        pooled: dict[str, list] = {"y": [], "bundled": [], "adapted": [], "rf": []}
        for name, train, test in (("first->second", first, second), ("second->first", second, first)):
            tr = np.array([i for i, p in enumerate(lf.pcap) if p in train], np.int64)
            te = np.array([i for i, p in enumerate(lf.pcap) if p in test and lf.encrypted[i]], np.int64)
            t = time.time()
            parts = A.fit_parts(model, lf, tr, seed=a.seed)
            with tempfile.TemporaryDirectory() as tmp:
                adapted_package.write_package(model, parts, lf, Path(tmp) / "pkg", lineage={"local_sha256": "0" * 64,
                                                                             "captures": len(train)})
                adapted = load_model(Path(tmp) / "pkg", threads=2)
                fit_s = time.time() - t
                recs, ctxs = [lf.records[i] for i in te], [lf.contexts[i] for i in te]
                p_ad = [adapted.label_sets["service"][j] for j in adapted.predict_proba(recs, ctxs).argmax(1)] \
                    if len(te) else []
            p_b = [model.label_sets["service"][j] for j in model.predict_proba(recs, ctxs).argmax(1)] if len(te) else []
            if a.parts:  # what each refitted part buys, in numpy (the package computes the same: parity.adapt)
                merged, chosen = parts.tables, parts.a
                plain = {h: A.merged_table(t, parts.service_labels if h == "service" else parts.app_labels,
                                           np.zeros(0, np.uint64), [], None) for h, t in model._tables.items()}
                for pname, fa, bias, tab in (("tables", 0.0, False, merged), ("forest", chosen, False, plain),
                                             ("bias", 0.0, True, plain), ("tables+forest", chosen, False, merged),
                                             ("tables+bias", 0.0, True, merged)):
                    parts.a, parts.tables = fa, tab
                    h = parts.raw_logits(lf, te) + (parts.bias if bias else 0)
                    pooled.setdefault(pname, []).extend(parts.service_labels[j] for j in h.argmax(1))
                parts.a, parts.tables = chosen, merged
            enc_tr = [i for i in tr if lf.encrypted[i]]
            rf = SizeBaseline("rf", seed=a.seed).fit(base_ds.records + [lf.records[i] for i in enc_tr],
                                                     list(base_ds.service) + [lf.service[i] for i in enc_tr])
            p_rf = [rf.labels[j] for j in rf.predict_proba(recs).argmax(1)] if len(te) else []
            y = [lf.service[i] for i in te]
            res[name] = {"train_flows": len(tr), "train_encrypted": len(enc_tr), "test_encrypted": len(te),
                         "adapt_seconds": round(fit_s, 1), "local_forest_weight": parts.a,
                         "new_service_labels": parts.info["new_service_labels"],
                         "bundled": A.score(y, p_b), "adapted": A.score(y, p_ad), "rf": A.score(y, p_rf)}
            for k, v in (("y", y), ("bundled", p_b), ("adapted", p_ad), ("rf", p_rf)):
                pooled[k] += v
        res["pooled"] = {k: A.score(pooled["y"], v) for k, v in pooled.items() if k != "y"}
        results[sd.name] = res
        print(f"\n{sd.name}: {res['encrypted']} encrypted of {res['flows']} flows, {res['captures']} captures")
        print(f"  {'split':<14} {'test':>5}  {'bundled F1/acc':>15}  {'adapted F1/acc':>15}  {'rf F1/acc':>15}  "
              f"{'F1 x':>5}  adapt s")
        for name in ("first->second", "second->first", "pooled"):
            r = res[name] if name != "pooled" else {**res["pooled"], "test_encrypted": len(pooled["y"]),
                                                     "adapt_seconds": float("nan")}
            b, ad, rf = r["bundled"], r["adapted"], r["rf"]
            ratio = ad["macro_f1_min5"] / b["macro_f1_min5"] if b["macro_f1_min5"] else float("nan")
            print(f"  {name:<14} {r['test_encrypted']:>5}  {b['macro_f1_min5']:.3f}/{b['accuracy']:.3f}     "
                  f"{ad['macro_f1_min5']:.3f}/{ad['accuracy']:.3f}     {rf['macro_f1_min5']:.3f}/{rf['accuracy']:.3f}"
                  f"     {ratio:5.2f}  {r['adapt_seconds']:.1f}")
        if a.parts:
            print("  pooled, one refitted part at a time (F1/acc): " + ", ".join(
                f"{k} {v['macro_f1_min5']:.3f}/{v['accuracy']:.3f}" for k, v in res["pooled"].items()
                if k not in ("bundled", "adapted", "rf")))
    print(f"\n{time.time() - t0:.0f} s in all", file=sys.stderr)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
