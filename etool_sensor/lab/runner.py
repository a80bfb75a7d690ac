"""Runs of `eval`: every method trained on a split's training flows and scored on its test flows
(run_split), K-fold runs pooled over the folds (run_kfold, with repeats over model seeds), and the shipped
model on every matched flow (evaluate_model). Methods (METHODS): the baselines (baselines.py), the students
distilled from the LLM teacher and their ablations, the hybrids (student times the shape forest, plus the
fingerprint tables), the teacher itself and its encoder without the LLM. torch and the training code are
imported only for the methods that need them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..features import FeatureSpec
from ..fingerprints import fit_tables
from ..runtime import load_model
from .baselines import SizeBaseline
from .headroom import dataset_headroom
from .report import fmt
from .scoring import bootstrap_vs, confusion_png, metrics
from .splits import KFOLDS, capture_groups, label_of, relabel
from ..train.data import one_sided, with_one_sided
from ..train.teacher_logits import load_cached_teacher, save_teacher_logits, teacher_cache_path, training_key

if TYPE_CHECKING:  # for annotations only
    from ..train.data import LabelledSet
    from ..train.student import Augment

Unlabelled = tuple[list, list, list]  # load_unlabelled: records, contexts, capture paths

METHODS = ("rf", "rf_shape", "knn", "etool", "hybrid", "student_no_llm", "hybrid_no_llm", "student_enc_teacher",
           "hybrid_enc_teacher", "student_ensemble", "hybrid_ensemble", "student_no_payload", "student_ports",
           "teacher", "encoder_only")
# student times the shape forest (train/forest.py)
HYBRIDS = {"hybrid": "etool", "hybrid_no_llm": "student_no_llm", "hybrid_enc_teacher": "student_enc_teacher",
           "hybrid_ensemble": "student_ensemble"}
# paired comparisons a K-fold run reports when both methods ran: what the LLM adds over distillation alone
# (the teacher's twin without the LLM, `encoder_only`, as the teacher) and what distillation adds at all
PAIRS = (("hybrid", "hybrid_enc_teacher"), ("hybrid", "hybrid_no_llm"), ("hybrid_enc_teacher", "hybrid_no_llm"),
         ("etool", "student_enc_teacher"), ("etool", "student_no_llm"), ("student_enc_teacher", "student_no_llm"),
         # what averaging `members` whole trainings (the first is student_no_llm's) adds
         ("hybrid_ensemble", "hybrid_no_llm"), ("student_ensemble", "student_no_llm"))
EXTRA_METHODS = ("rf_hello", "student_capbal")  # only when named (experiments, docs/model-card.md)


def _predict(model, records, contexts, labels_attr: list[str]) -> tuple[list[str], np.ndarray]:
    """Labels and confidences; a hybrid gives the confidence its package's verdicts would carry."""
    if hasattr(model, "predict_with_confidence"):
        p, conf = model.predict_with_confidence(records, contexts)
    else:
        p = np.asarray(model.predict_proba(records, contexts))
        conf = p.max(1) if p.shape[0] else np.zeros(0)
    if p.shape[0] == 0:
        return [], np.zeros(0)
    return [labels_attr[i] for i in p.argmax(1)], np.asarray(conf)


def ssl_extra(unlabelled: Unlabelled, tr: LabelledSet, te: LabelledSet,
              transductive: bool = False) -> tuple[tuple[list, list], dict]:
    """The unlabelled (records, contexts) a split's self-supervised stages read besides its training flows:
    none of the training flows again, and none of the test captures' flows unless `transductive` (a sensor
    may pretrain on the traffic it classifies; a measurement of new captures must say that it did)."""
    from ..train.data import in_captures

    recs, ctxs, names = unlabelled
    seen = {r.uid for r in tr.records}
    test_caps = set() if transductive else set(te.pcap)
    is_test = {n: in_captures(n, test_caps) for n in set(names)}
    out_r, out_c, left_out = [], [], 0
    for r, c, n in zip(recs, ctxs, names):
        if is_test[n]:
            left_out += 1
        elif r.uid not in seen:
            out_r.append(r)
            out_c.append(c)
    return (out_r, out_c), {"flows": len(out_r), "test_capture_flows_left_out": left_out,
                            "transductive": transductive}


VIEWS = {"client_only": True, "server_only": False}  # eval --views: the test flows seen from one side


def view_scores(model: Any, te: LabelledSet, orig: bool) -> dict:
    """metrics (with _pred and _conf) of `model` on the flows of `te` seen from one side (train.data.one_sided:
    the originator's packets when `orig`); a flow whose side sent fewer than 2 packets is answered '-', a miss,
    as a sensor would give it no verdict."""
    seen = [one_sided(r, orig) for r in te.records]
    ok = [i for i, r in enumerate(seen) if r is not None]
    pred, conf = ["-"] * len(te), np.zeros(len(te))
    if ok:
        p, c = _predict(model, [seen[i] for i in ok], [te.contexts[i] for i in ok], list(model.labels))
        for j, i in enumerate(ok):
            pred[i], conf[i] = p[j], c[j]
    r = metrics(te.labels, pred, conf)
    r["_pred"], r["_conf"] = pred, [float(c) for c in conf]
    return r


def run_split(ds: LabelledSet, split: dict, column: str, methods: Sequence[str], *, seed: int, quick: bool,
              teacher_cache: str | None, device: str, log: Callable[[str], None], png_dir: Path | None,
              split_name: str, unlabelled: Unlabelled | None = None, spec: FeatureSpec | None = None,
              keep_predictions: bool = False, student_config: dict | None = None, capture_balance: float = 0.5,
              hello_bytes: int = 0, model_seed: int | None = None, teachers: dict | None = None,
              near_hellos: int | None = None, members: int = 3, ssl_epochs: int | None = None,
              augment: Augment | None = None, transductive: bool = False, epochs: int | None = None,
              one_sided: float = 0.0, views: bool = False) -> dict:
    """Every method trained on split["train"] and scored on split["test"]. `seed` seeds the teachers,
    `model_seed` (default `seed`) everything else: a repeat with another model seed keeps the teacher.
    `teachers` (variant -> teacher) is filled and reused, so repeats of one split train each teacher once.
    `members`: how many whole trainings student_ensemble / hybrid_ensemble average (model seeds model_seed + i,
    self-supervised stage included; the first is student_no_llm's). `augment`: every student's (train.student.Augment).
    `unlabelled`: (records, contexts, capture paths) that the self-supervised stages read besides the training
    flows (ssl_extra: the test captures' flows only when `transductive`). `one_sided` P: every method also
    trains on one-sided copies of a share P of its training flows (train.data.with_one_sided, drawn with the
    model seed); the teachers and the self-supervised stage read the flows as captured. `views`: every
    method is also scored on the test flows seen from one side, as methods "M@client_only" and "M@server_only"
    (VIEWS; a flow whose side sent fewer than 2 packets counts as a miss)."""
    col = split["label"] or column
    mseed = seed if model_seed is None else model_seed
    teachers = {} if teachers is None else teachers
    full = relabel(ds, col)
    tr, te = full.subset(split["train"]), full.subset(split["test"])
    labelled = tr  # the teachers train on these (one teacher per split, whatever the model seed)
    if one_sided:
        tr = with_one_sided(tr, one_sided, mseed)
    res: dict = {"label": col, "train_flows": len(tr), "test_flows": len(te),
                 "train_pcaps": len(set(tr.pcap)), "test_pcaps": len(set(te.pcap)), "methods": {}}
    if "held_out_apps" in split:
        res["held_out_apps"] = split["held_out_apps"]
    extra = ssl = None  # unlabelled flows read besides the training flows; the students' whole SSL set
    if unlabelled is not None:
        extra, res["unlabelled"] = ssl_extra(unlabelled, labelled, te, transductive)
        ssl = (list(labelled.records) + extra[0], list(labelled.contexts) + extra[1])  # as the teacher's stage 1
        log(f"eval[{split_name}]: the self-supervised stages also read {res['unlabelled']['flows']} unlabelled flows "
            f"({res['unlabelled']['test_capture_flows_left_out']} of the test captures left out)")
    elif one_sided:  # the self-supervised stage reads flows as captured, as train's does: no copies
        ssl = (list(labelled.records), list(labelled.contexts))

    def get_teacher(variant: str = "teacher"):
        if variant in teachers:
            return teachers[variant]
        t = None
        key = training_key(labelled, extra[0] if extra is not None else None) if teacher_cache else None
        if teacher_cache:
            t = load_cached_teacher(full, teacher_cache_path(teacher_cache, split_name, col, variant), key)
            if t is not None:
                log(f"eval[{split_name}]: {variant} logits from {teacher_cache}")
        if t is None:
            from ..train.teacher import train_teacher

            t = train_teacher(labelled, label_column=col, quick=quick, device=device, seed=seed,
                              use_llm=variant == "teacher", unlabelled=extra, log=log)
            if teacher_cache and not quick:  # write-through: the next run with this cache skips the training
                path = teacher_cache_path(teacher_cache, split_name, col, variant)
                path.parent.mkdir(parents=True, exist_ok=True)
                save_teacher_logits(path, full, t, key)
                log(f"eval[{split_name}]: {variant} logits saved to {path}")
        teachers[variant] = t
        return t

    students: dict = {}

    def student_for(m: str):
        from ..train.student import ensemble_of, train_student

        if m == "student_ensemble":  # `members` whole trainings (self-supervised stage included), averaged
            if "student_no_llm" not in students:  # the first member, kept for the methods that follow
                students["student_no_llm"] = student_for("student_no_llm")
            rest = [train_student(tr, label_column=col, quick=quick, seed=mseed + i, log=log, spec=spec,
                                  config=student_config, unlabelled=ssl, ssl_epochs=ssl_epochs, augment=augment,
                                  epochs=epochs)
                    for i in range(1, members)]
            return ensemble_of([students["student_no_llm"], *rest])
        kw = {"etool": {}, "student_no_llm": {}, "student_enc_teacher": {},
              "student_no_payload": dict(use_payload=False), "student_ports": dict(use_ports=True),
              "student_capbal": dict(capture_balance=capture_balance)}[m]
        # ablations change one thing from etool: they keep its teacher (built only when needed);
        # student_enc_teacher changes the teacher to its twin without the LLM (the control for the LLM's share)
        if m in ("student_no_llm", "student_capbal"):
            t = None
        else:
            t = get_teacher("encoder_only" if m == "student_enc_teacher" else "teacher")
        return train_student(tr, label_column=col, quick=quick, seed=mseed, teacher=t, log=log, spec=spec,
                             config=student_config, unlabelled=ssl, ssl_epochs=ssl_epochs, augment=augment,
                             epochs=epochs, **kw)

    for m in methods:
        t0 = time.time()
        try:
            if m in ("rf", "knn", "rf_hello", "rf_shape"):
                model = SizeBaseline(m, mseed, quick).fit(tr.records, tr.labels)
            elif m in ("teacher", "encoder_only"):
                model = get_teacher(m)
            elif m in HYBRIDS:  # the student of the named method (trained once per split) times the forest
                from ..train.forest import Hybrid, train_forest

                base = HYBRIDS[m]
                if base not in students:
                    students[base] = student_for(base)
                st = students[base]
                table, n_chunks = None, (spec or FeatureSpec()).payload_packets
                if hello_bytes:  # flows read with TLS hellos whole: the hello table too, as the default has
                    head = "app" if col == "app" else "service"  # near hellos for the service head, as a package
                    table = fit_tables(tr.records, {head: tr.labels}, {head: st.labels}, n_chunks, near_hellos)[head]
                # as a package: the forest joins the service head only, the tables both heads
                forest = None if col == "app" else train_forest(tr.records, tr.contexts, tr.labels, spec=spec,
                                                                seed=mseed, quick=quick)
                model = Hybrid(st, forest, table=table, chunks=n_chunks)
            else:
                model = students[m] = student_for(m)
            fit_s = time.time() - t0
            pred, conf = _predict(model, te.records, te.contexts, list(model.labels))
            r = metrics(te.labels, pred, conf)
            r["fit_s"] = round(fit_s, 1)
            if keep_predictions:
                r["_pred"], r["_conf"] = list(pred), [float(c) for c in conf]
            res["methods"][m] = r
            if views:
                for view, orig in VIEWS.items():
                    rv = view_scores(model, te, orig)
                    if not keep_predictions:
                        rv.pop("_pred"), rv.pop("_conf")
                    res["methods"][f"{m}@{view}"] = rv
                    log(f"eval[{split_name}] {m + '@' + view:18s} macroF1 {rv['macro_f1']:.3f} "
                        f"min5 {rv['macro_f1_min5']:.3f} acc {rv['accuracy']:.3f}")
            if png_dir is not None and m in ("etool", "hybrid", "teacher", "rf") and len(te):
                png = png_dir / f"confusion_{col}_{split_name}_{m}.png"
                if confusion_png(te.labels, pred, png, f"{m}, {split_name} split, {col}"):
                    r["confusion_png"] = png.name
            log(f"eval[{split_name}] {m:18s} macroF1 {r['macro_f1']:.3f} min5 {r['macro_f1_min5']:.3f} "
                f"acc {r['accuracy']:.3f} ECE {r.get('ece', 0):.3f} ({fit_s:.0f}s)")
        except Exception as e:  # one broken method must not hide the others' numbers
            res["methods"][m] = {"error": f"{type(e).__name__}: {e}"}
            log(f"eval[{split_name}] {m}: FAILED {type(e).__name__}: {e}")
    return res


def app_seen_breakdown(y: Sequence[str], pred: Sequence[str], seen: np.ndarray) -> dict[str, dict]:
    """Metrics on the test flows whose app had flows in training ("seen": the same apps in new sessions,
    the paper's time and version shift) and on the others ("unseen": the service of a new app). On the nDPI
    corpus most captures hold one or two apps, so a capture split is partly an unseen-app split; this says
    how much of each a score is made of."""
    out: dict[str, dict] = {}
    for name, mask in (("seen", seen), ("unseen", ~seen)):
        idx = np.flatnonzero(mask)
        r = metrics([y[i] for i in idx], [pred[i] for i in idx]) if len(idx) else {}
        out[name] = {"flows": int(len(idx)), **{k: r.get(k) for k in ("macro_f1", "macro_f1_min5", "accuracy")}}
    return out


def run_kfold(ds: LabelledSet, column: str, methods: Sequence[str], *, folds: int, seed: int,
              log: Callable[[str], None],
              png_dir: Path | None, kind: str = "capture_kfold", repeats: int = 1, first_repeat: int = 0,
              **kw) -> dict:
    """Every method trained `folds` times (one per fold of `kind`); metrics over the pooled predictions.
    With `repeats` R > 1 the same folds are trained R times with model seeds seed + 100 r (teachers are
    trained once per fold and shared): the main numbers are repeat 0's, and "repeats" holds each method's
    pooled macro-F1 (>=5) per repeat, its mean and sd, because one student init moves the score by several
    points (docs/model-card.md, "Results": the seed spread). `first_repeat` S starts the model seeds at
    seed + 100 S, so a later run adds seeds to an earlier one on the same folds instead of repeating them."""
    if repeats < 1 or first_repeat < 0:
        raise ValueError("--repeats must be >= 1 and --first-repeat >= 0")
    n = len(ds)
    parts = KFOLDS[kind](ds, folds, seed)
    seeds = [seed + 100 * (first_repeat + r) for r in range(repeats)]
    base_methods = list(methods)
    if kw.get("views"):  # each method's scores on the one-sided test flows are methods of their own here
        methods = base_methods + [f"{m}@{v}" for m in base_methods for v in VIEWS]
    preds: list[dict[str, list]] = [{m: [None] * n for m in methods} for _ in seeds]
    conf: dict[str, list] = {m: [0.0] * n for m in methods}
    per_fold: dict[str, list] = {m: [] for m in methods}
    errors: dict[str, str] = {}
    fit_s: dict[str, float] = {m: 0.0 for m in methods}
    seen = np.zeros(n, bool)  # the flow's app has flows in its fold's training part
    apps = list(ds.app)
    for k, te in enumerate(parts):
        tr = np.setdiff1d(np.arange(n), te)
        train_apps = {apps[i] for i in tr}
        seen[te] = [apps[i] in train_apps for i in te]
        teachers: dict = {}  # one teacher per fold, whatever the repeat
        for r, mseed in enumerate(seeds):
            rep = f", model seed {mseed} (repeat {r + 1}/{repeats})" if len(seeds) > 1 or mseed != seed else ""
            log(f"eval[{kind}]: fold {k + 1}/{folds}: train {len(tr)} / test {len(te)} flows{rep}")
            res = run_split(ds, {"train": tr, "test": te, "label": None}, column, base_methods, seed=seed, log=log,
                            png_dir=None, split_name=f"{kind}{k}_seed{seed}", keep_predictions=True,
                            model_seed=mseed, teachers=teachers, **kw)
            for m in methods:  # a view of a method that failed was never scored: it failed too
                if m not in res["methods"]:
                    errors.setdefault(m, f"not scored: {m.split('@')[0]} failed")
            for m, rm in res["methods"].items():
                if "error" in rm:
                    errors.setdefault(m, rm["error"])
                    continue
                for j, i in enumerate(te):
                    preds[r][m][i] = rm["_pred"][j]
                    if r == 0:
                        conf[m][i] = rm["_conf"][j]
                if r == 0:
                    per_fold[m].append(rm["macro_f1_min5"])
                    fit_s[m] += rm.get("fit_s", 0.0)
    pred = preds[0]
    y = list(ds.labels)
    out: dict = {"label": column, "folds": folds, "model_seeds": seeds, "train_flows": n - min(map(len, parts)),
                 "test_flows": n,
                 "train_pcaps": len(set(ds.pcap)) - min(len({ds.pcap[i] for i in p}) for p in parts),
                 "test_pcaps": len(set(ds.pcap)), "methods": {}}
    if kind == "capture_kfold":
        groups, unit = capture_groups(ds), "capture group"
        out["groups"] = len(set(groups))
    else:
        groups, unit = list(ds.pcap), "capture file"
    out["headroom"] = dataset_headroom(ds, parts)  # what the folds leave learnable, per class (no model)
    for m in methods:
        if m in errors:
            out["methods"][m] = {"error": errors[m]}
            continue
        r = metrics(y, pred[m], conf[m])
        f = np.array(per_fold[m])
        r.update(fold_macro_f1_min5=[round(float(v), 4) for v in f], fold_mean=float(f.mean()),
                 fold_sd=float(f.std(ddof=1)) if len(f) > 1 else 0.0, fit_s=round(fit_s[m], 1),
                 by_app_seen=app_seen_breakdown(y, pred[m], seen))
        out["methods"][m] = r
        if png_dir is not None and m in ("etool", "hybrid", "hybrid_no_llm", "rf", "student_no_llm"):
            png = png_dir / f"confusion_{column}_{kind}_{m}.png"
            if confusion_png(y, pred[m], png, f"{m}, {kind} (pooled), {column}"):
                r["confusion_png"] = png.name
        b = r["by_app_seen"]
        log(f"eval[{kind}] {m:18s} pooled macroF1 {r['macro_f1']:.3f} min5 {r['macro_f1_min5']:.3f} "
            f"acc {r['accuracy']:.3f}; folds min5 {r['fold_mean']:.3f} +- {r['fold_sd']:.3f}; "
            f"min5 on apps seen in training {fmt(b['seen']['macro_f1_min5'])}, unseen {fmt(b['unseen']['macro_f1_min5'])}")
    if "rf" in methods and "rf" not in errors:  # the by-capture target is "at least 2x the forest": how sure?
        for m in methods:
            if m != "rf" and m not in errors:
                v = out["methods"][m]["vs_rf"] = bootstrap_vs(y, pred[m], pred["rf"], groups, seed=seed,
                                                              unit=unit)
                log(f"eval[{kind}] {m:18s} vs rf macroF1(>=5) ratio {v['ratio']} (95% CI {v['ratio_ci95']}), "
                    f"difference {v['diff']} ({v['diff_ci95']}), {v['groups']} {v['unit']}s resampled")
    ok = [m for m in methods if m not in errors]
    if repeats > 1:
        out["repeats"] = repeat_summary(y, preds, seeds, ok, log, kind)
    pairs = [(a, b) for a, b in PAIRS if a in ok and b in ok]
    if pairs:
        out["paired"] = paired_summary(y, preds, seeds, pairs, groups, unit, log, kind)
    out["pooled_predictions"] = {"y": y, "groups": list(map(str, groups)), "model_seeds": seeds,
                                 "methods": {m: [p[m] for p in preds] for m in ok}}
    return out


def paired_summary(y: Sequence[str], preds: list[dict[str, list]], seeds: Sequence[int],
                   pairs: Sequence[tuple[str, str]], groups: Sequence[str], unit: str,
                   log: Callable[[str], None] = lambda s: None, kind: str = "capture_kfold") -> dict:
    """Method A against method B on the same folds and model seed: per repeat the pooled macro-F1 (>=5)
    difference with its 95 % interval from resampling whole groups, and the mean difference over repeats.
    A difference is a gain only where every repeat's interval excludes zero on the same side."""
    out: dict = {}
    for a, b in pairs:
        runs = [bootstrap_vs(y, p[a], p[b], groups, seed=s, unit=unit) for p, s in zip(preds, seeds)]
        acc = [float(np.mean([u == v for u, v in zip(y, p[a])]) - np.mean([u == v for u, v in zip(y, p[b])]))
               for p in preds]
        d, ci = [r["diff"] for r in runs], [r["diff_ci95"] for r in runs]
        lo, hi = min(c[0] for c in ci), max(c[1] for c in ci)
        verdict = "gain" if lo > 0 else "loss" if hi < 0 else "noise"
        out[f"{a} - {b}"] = {"diff": d, "diff_ci95": ci, "mean_diff": round(float(np.mean(d)), 4),
                             "accuracy_diff": [round(v, 4) for v in acc], "verdict": verdict}
        log(f"eval[{kind}] {a} - {b}: macroF1(>=5) difference per model seed "
            + ", ".join(f"{x:+.3f} ({c[0]:+.3f}..{c[1]:+.3f})" for x, c in zip(d, ci))
            + f"; accuracy {', '.join(f'{v:+.3f}' for v in acc)}: {verdict}")
    return out


def repeat_summary(y: Sequence[str], preds: list[dict[str, list]], seeds: Sequence[int], methods: Sequence[str],
                   log: Callable[[str], None] = lambda s: None, kind: str = "capture_kfold") -> dict:
    """Pooled macro-F1 (>=5) and accuracy of every method in every repeat, their mean and sd, and the
    ratio of the means to the forest's (the by-capture target's reference)."""
    out: dict = {"model_seeds": list(seeds), "methods": {}}
    for m in methods:
        rs = [metrics(y, p[m]) for p in preds]
        f = np.array([r["macro_f1_min5"] for r in rs])
        out["methods"][m] = {"macro_f1_min5": [round(float(v), 4) for v in f],
                             "accuracy": [round(float(r["accuracy"]), 4) for r in rs],
                             "mean": round(float(f.mean()), 4), "sd": round(float(f.std(ddof=1)), 4)}
    rf = out["methods"].get("rf")
    for m, v in out["methods"].items():
        if rf and m != "rf" and rf["mean"] > 0:
            v["ratio_of_means_to_rf"] = round(v["mean"] / rf["mean"], 3)
        log(f"eval[{kind}] {m:18s} over {len(seeds)} model seeds: pooled min5 {v['mean']:.3f} +- {v['sd']:.3f} "
            f"({', '.join(f'{x:.3f}' for x in v['macro_f1_min5'])})"
            + (f"; ratio of means to rf {v['ratio_of_means_to_rf']}" if "ratio_of_means_to_rf" in v else ""))
    return out


def evaluate_model(ds: LabelledSet, model_path: str | None, column: str) -> dict:
    """The shipped (or given) model on every matched flow."""
    model = load_model(model_path)
    head = "service" if column == "category" else "app"
    sets = model.label_sets
    labels = list(sets[head] if isinstance(sets, dict) else sets)
    p, conf = model.predict_with_confidence(ds.records, ds.contexts, head=head)
    pred = [labels[i] for i in p.argmax(1)] if len(p) else []
    y = label_of(ds, column)
    r = metrics(y, pred, conf)
    r["unknown_labels"] = sorted(set(y) - set(labels))
    r["_pred"] = pred
    return r
