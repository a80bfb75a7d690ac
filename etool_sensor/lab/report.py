"""The markdown report of an `eval` JSON: the shipped model, then per split the methods' scores, the K-fold
details (per fold, against the forest, repeats, apps seen in training, headroom), what a confidence threshold
buys, per-class scores and the confusion PNGs."""

from __future__ import annotations

from pathlib import Path

from .headroom import headroom_lines
def fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else "n/a" if v is None else str(v)


def coverage_lines(methods: dict[str, dict]) -> list[str]:
    """The report's table of confidence_coverage per method ("share / accuracy" per threshold)."""
    cov = {m: r["by_confidence"] for m, r in methods.items() if r.get("by_confidence")}
    if not cov:
        return []
    ts = [row["threshold"] for row in next(iter(cov.values()))["thresholds"]]
    lines = ["What a confidence threshold buys: the share of test flows at or above it / their accuracy "
             "(AUROC: the confidence as a score for a right label; 0.5 = no better than chance):", "",
             "| method | AUROC | " + " | ".join(f">= {t:g}" for t in ts) + " |", "|---|---|" + "---|" * len(ts)]
    for m, c in cov.items():
        cells = [f"{row['share']:.2f} / {fmt(row['accuracy'])}" for row in c["thresholds"]]
        lines.append(f"| {m} | {fmt(c['auroc'])} | " + " | ".join(cells) + " |")
    return lines + [""]


def write_report(res: dict, path: Path) -> None:
    keys = ("macro_f1", "macro_f1_min5", "weighted_f1", "accuracy", "ece", "fit_s")
    lines = [f"# etool evaluation: label column `{res['label_column']}`", "",
             f"Data: {res['data']} ({res['flows']} matched flows, encrypted_only={res['encrypted_only']}, "
             f"names masked), seed {res['seed']}, quick={res['quick']}.", ""]
    if "model" in res:
        m = res["model"]
        if "error" in m:
            lines += ["## Shipped model", "", f"not evaluated: {m['error']}", ""]
        else:
            lines += ["## Shipped model on all matched flows", "", "| " + " | ".join(keys[:5]) + " |",
                      "|" + "---|" * 5, "| " + " | ".join(fmt(m.get(k, "")) for k in keys[:5]) + " |", ""]
            lines += coverage_lines({"model": m})
    for sname, s in res.get("splits", {}).items():
        lines += [f"## Split `{sname}` (label {s['label']}; train {s['train_flows']} flows / {s['train_pcaps']} "
                  f"captures, test {s['test_flows']} flows / {s['test_pcaps']} captures)", "",
                  "| method | macro-F1 | macro-F1 (>=5) | weighted-F1 | accuracy | ECE | fit s |",
                  "|---|---|---|---|---|---|---|"]
        for mname, r in s["methods"].items():
            if "error" in r:
                lines.append(f"| {mname} | error: {r['error'][:80]} | | | | | |")
            else:
                lines.append(f"| {mname} | " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |")
        lines.append("")
        if "folds" in s:
            how = "capture" if sname == "capture_kfold" else "random stratified"
            lines += [f"{s['folds']} {how} folds; the table is over the pooled out-of-fold predictions. "
                      "Per fold, macro-F1 (>=5):", ""]
            for mname, r in s["methods"].items():
                if "fold_macro_f1_min5" in r:
                    vals = ", ".join(f"{v:.3f}" for v in r["fold_macro_f1_min5"])
                    lines.append(f"- {mname}: {r['fold_mean']:.3f} +- {r['fold_sd']:.3f} ({vals})")
            lines.append("")
            vs = {m: r["vs_rf"] for m, r in s["methods"].items() if "vs_rf" in r}
            if vs:
                any_vs = next(iter(vs.values()))
                lines += [f"Against the forest, pooled macro-F1 (>=5), {any_vs['boot']} bootstrap resamples of the "
                          f"{any_vs['groups']} {any_vs.get('unit', 'capture file')}s (95 % intervals):", "",
                          "| method | ratio to rf | 95 % CI | difference | 95 % CI |", "|---|---|---|---|---|"]
                for m, v in vs.items():
                    lines.append(f"| {m} | {fmt(v['ratio'])} | {v['ratio_ci95']} | {fmt(v['diff'])} | {v['diff_ci95']} |")
                lines.append("")
            if "repeats" in s:
                rp = s["repeats"]
                lines += [f"Trained {len(rp['model_seeds'])} times on the same folds (model seeds "
                          f"{', '.join(map(str, rp['model_seeds']))}; teachers shared), pooled macro-F1 (>=5):", "",
                          "| method | per repeat | mean | sd | ratio of means to rf |", "|---|---|---|---|---|"]
                for m, v in rp["methods"].items():
                    lines.append(f"| {m} | {', '.join(f'{x:.3f}' for x in v['macro_f1_min5'])} | {v['mean']:.3f} | "
                                 f"{v['sd']:.3f} | {fmt(v.get('ratio_of_means_to_rf'))} |")
                lines.append("")
            seen = {m: r["by_app_seen"] for m, r in s["methods"].items() if "by_app_seen" in r}
            if seen:
                b = next(iter(seen.values()))
                lines += [f"Test flows whose app has flows in the training folds (seen: {b['seen']['flows']} flows, "
                          f"the same apps in new sessions) and the others (unseen: {b['unseen']['flows']} flows):", "",
                          "| method | seen macro-F1 (>=5) | seen accuracy | unseen macro-F1 (>=5) | unseen accuracy |",
                          "|---|---|---|---|---|"]
                for m, b in seen.items():
                    lines.append(f"| {m} | {fmt(b['seen']['macro_f1_min5'])} | {fmt(b['seen']['accuracy'])} | "
                                 f"{fmt(b['unseen']['macro_f1_min5'])} | {fmt(b['unseen']['accuracy'])} |")
                lines.append("")
            if "headroom" in s:
                lines += headroom_lines(s["headroom"])
        lines += coverage_lines(s["methods"])
        main = s["methods"].get("etool") or next((r for r in s["methods"].values() if "per_class" in r), None)
        if main and "per_class" in main:
            which = "etool" if "etool" in s["methods"] and "per_class" in s["methods"]["etool"] else "first method"
            lines += [f"Per class ({which}):", "", "| class | support | precision | recall | F1 |", "|---|---|---|---|---|"]
            for c, v in sorted(main["per_class"].items(), key=lambda kv: -kv[1]["support"]):
                lines.append(f"| {c} | {v['support']} | {v['precision']:.2f} | {v['recall']:.2f} | {v['f1']:.2f} |")
            lines.append("")
            if main.get("confusion_png"):
                lines += [f"![confusion]({main['confusion_png']})", ""]
    path.write_text("\n".join(lines))
