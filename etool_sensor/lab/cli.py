"""`etool-sensor eval`: the shipped model on labelled captures, and every method on every split.

    etool-sensor eval [--model DIR] --data DIR --labels CSV --label-column {category,app} --json OUT.json
                      [--encrypted-only] [--report OUT.md] [--splits iid,capture,unseen_app,shifted]
                      [--methods ...] [--quick] [--seed 0] [--teacher-cache DIR]

Splits (all from --seed, over the matched flows):
  iid         random flows, stratified 70/30
  capture     group split on capture groups (~30% of flows in test): the main non-IID split. A capture group
              is the captures linked by a shared server endpoint or a client address recorded the same day
              (capture_groups): nDPI's files were cut from shared recordings, so file names leak sessions
  unseen_app  for each service with >= 2 apps, about a third of its apps (at least one) held out
              entirely; the test asks for the *service* (category) of those unseen apps
  shifted     per-class test fractions from 0.6 (rarest class) down to 0.1 (commonest): train and test
              have different class priors (NETD-1/2 style)
  capture_kfold  (only when named; --folds K, default 5) K group folds on capture groups: every flow is
              tested once, by a model that never saw its capture nor its servers. Metrics over the pooled out-of-fold
              predictions, plus each fold's macro-F1 (>=5) with mean and standard deviation. One
              `capture` partition holds ~70 captures in test, and which ones decides much of the score
              (macro-F1 (>=5) of the same method moves by 2x between seeds); the pooled K-fold number is
              the one to compare methods by.
  iid_kfold   (only when named; --folds K) the same with random folds stratified by label: the IID
              reference for the capture K-fold, so that the IID -> by-capture drop is measured on pooled
              predictions of every flow rather than on one partition of each.
  On both K-fold splits, when rf runs, every other method also gets `vs_rf`: the ratio and difference of
  its pooled macro-F1 (>=5) to the forest's with 95 % intervals from 1,000 bootstrap resamples of whole
  capture groups (capture_kfold) or files (the by-capture target is a ratio to the forest). Each K-fold result also holds
  `headroom` (headroom.py): per class, the share of its test flows whose class, app with that label, or
  exact fingerprint with that label is in their fold's training flows, and the macro-F1 of an oracle that
  knows each flow's app and of an exact fingerprint lookup: how much of a low score the folds themselves
  explain.

Methods: rf and knn on the first 20 signed packet sizes (AppScanner/CUMUL-like), rf_shape (the forest on
what the hybrid reads: flights, TCP/UDP and TLS hello bits, SizeBaseline; the feature-matched baseline), etool (student distilled
from the LLM teacher), student_no_llm (no teacher), student_no_payload, student_ports, teacher (the LLM
teacher itself) and encoder_only (the teacher's encoder + projector with the LLM removed: what the LLM adds).
The model and torch imports happen only for the methods that need them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from ..features import FeatureSpec
from ..fingerprints import NEAR_M
from ..flows import DEFAULT_HELLO_BYTES, FlowParams
from ..runtime import ModelError
from .report import fmt, write_report
from .runner import EXTRA_METHODS, METHODS, evaluate_model, run_kfold, run_split
from .scoring import confusion, confusion_png, metrics
from .splits import EXTRA_SPLITS, KFOLDS, SPLITS, label_of, make_splits


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model package directory (default: the bundled model)")
    p.add_argument("--data", required=True, help="directory holding the captures named in the CSV")
    p.add_argument("--labels", required=True, help="labels CSV (columns of nDPI labels.csv)")
    p.add_argument("--label-column", default="category", choices=["category", "app"])
    p.add_argument("--json", required=True, help="write the metrics here")
    p.add_argument("--encrypted-only", action="store_true")
    p.add_argument("--report", default=None, help="markdown report (confusion PNGs beside it)")
    p.add_argument("--splits", default=None,
                   help=f"comma list of {','.join(SPLITS + EXTRA_SPLITS)} ('all' = {','.join(SPLITS)})")
    p.add_argument("--folds", type=int, default=5, help="folds of the capture_kfold and iid_kfold splits (default 5)")
    p.add_argument("--repeats", type=int, default=1, metavar="R",
                   help="K-fold splits: train every method R times on the same folds with model seeds "
                        "seed + 100 r (teachers shared) and report the spread (default 1)")
    p.add_argument("--first-repeat", type=int, default=0, metavar="S",
                   help="start the repeats' model seeds at seed + 100 S, to add seeds to an earlier run on the "
                        "same folds (default 0)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {','.join(METHODS)}")
    p.add_argument("--quick", action="store_true", help="small, fast training (tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pcaps", default=None, help="comma list: restrict to these captures")
    p.add_argument("--teacher-cache", default=None,
                   help="directory of teacher logits (teacher_<column>_<split>.npz; K-fold: "
                        "teacher_<column>_<split><fold>_seed<seed>.npz), written after training and reused")
    p.add_argument("--device", default="cpu")
    p.add_argument("--unlabelled", action="append", default=None, metavar="DIR",
                   help="captures (repeatable) whose flows every split's self-supervised stages (students and "
                        "teacher) read besides its training flows: other traffic, or --data itself (every flow of "
                        "the training captures, labelled or not, as train pretrains); flows of a split's test "
                        "captures are left out unless --transductive")
    p.add_argument("--transductive", action="store_true",
                   help="with --unlabelled: the self-supervised stages also read the test captures' flows "
                        "(unlabelled), as a sensor pretraining on the network it classifies")
    p.add_argument("--no-model", action="store_true", help="skip the shipped model (splits only)")
    p.add_argument("--baselines-from", nargs=2, metavar=("DIR", "CSV"), default=None,
                   help="train the size forests (rf, rf_shape) on these labelled captures (the model's own training "
                        "data, e.g. ../shared/data/ndpi/pcap ../shared/data/ndpi/labels.csv) and score them beside "
                        "the model on the same flows, with the ratio of the model's macro-F1 (>=5) to each")
    p.add_argument("--payload-bytes", type=int, default=None,
                   help="B for the students' features (default: the flow record default)")
    p.add_argument("--student-config", default=None, metavar="JSON",
                   help='encoder shape of every student method, e.g. \'{"layers": 1, "pkt_stride": 4, '
                        '"dgram_stride": 16}\' (the bundled fast model); default: train/model.py EncoderConfig')
    p.add_argument("--hello-bytes", type=int, default=DEFAULT_HELLO_BYTES, metavar="H",
                   help="flows are read with TLS hellos whole up to H bytes (flow.hello_bytes) and the hybrids "
                        "add a fingerprint table (fingerprints.py) trained on the same flows, as the default model "
                        f"does (default {DEFAULT_HELLO_BYTES}; 0: no table, as 0.5.0)")
    p.add_argument("--near-hellos", type=int, default=None, metavar="M",
                   help="the hybrids' service table backs off to the M most similar training hellos for a hello "
                        "it lacks (fingerprints.NearHellos), as the default model does since 0.8.0 (default "
                        "fingerprints.NEAR_M; 0: exact fingerprints only, as 0.7.0)")
    p.add_argument("--flights", type=int, default=0, metavar="F",
                   help="students also get the first F flights (direction-run byte and packet totals, "
                        "features.flights) in their meta token; 0 = off (the shipped features)")
    p.add_argument("--members", type=int, default=3, metavar="M",
                   help="methods student_ensemble / hybrid_ensemble average M whole trainings of the student "
                        "(model seeds seed + i, self-supervised stage included; train --members; default 3)")
    p.add_argument("--epochs", type=int, default=None, metavar="E",
                   help="supervised epochs of every student (train --epochs; default 30, quick 4)")
    p.add_argument("--ssl-epochs", type=int, default=None, metavar="E",
                   help="epochs of the students' self-supervised stage (train --ssl-epochs; default 6, quick 1)")
    p.add_argument("--time-shift", type=int, default=0, metavar="K",
                   help="students train on flows whose gaps are scaled by 2**k, k drawn per flow from -K..K "
                        "(train.student.Augment; default 0: off)")
    p.add_argument("--context-drop", type=float, default=0.0, metavar="P",
                   help="students train without a flow's BURST context with probability P (default 0: off)")
    p.add_argument("--one-sided", type=float, default=0.0, metavar="P",
                   help="every method also trains on copies of a share P of its training flows seen from one side "
                        "only (train --one-sided; default 0: off)")
    p.add_argument("--views", action="store_true",
                   help="also score every method on the test flows seen from one side, as methods "
                        "M@client_only and M@server_only (a sensor behind asymmetric routing)")
    p.add_argument("--capture-balance", type=float, default=0.5, metavar="POWER",
                   help="method student_capbal draws training flows with probability (flows of their capture) "
                        "** -POWER (default 0.5; 1 = every capture equally often)")
    p.add_argument("--no-normalize-random", action="store_true",
                   help="students keep per-session random fields (TLS Random/session ID, QUIC CIDs): an ablation")


def eval_main(args: argparse.Namespace) -> int:
    from ..train.data import LabelsError, load_labelled

    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.time()
    pcaps = args.pcaps.split(",") if args.pcaps else None
    params = FlowParams(payload_bytes=args.payload_bytes) if getattr(args, "payload_bytes", None) else FlowParams()
    hello = getattr(args, "hello_bytes", DEFAULT_HELLO_BYTES)
    if not 0 <= hello <= 65535:
        log(f"eval: --hello-bytes {hello} must be in 0..65535")
        return 2
    params = dataclasses.replace(params, hello_bytes=hello)
    spec = FeatureSpec.from_params(params, normalize_random=not getattr(args, "no_normalize_random", False))
    if getattr(args, "flights", 0):
        if args.flights < 0 or args.flights > params.packets:
            log(f"eval: --flights {args.flights} must be between 0 and the {params.packets} packets read")
            return 2
        spec = dataclasses.replace(spec, flights=args.flights)
    student_config = None
    if getattr(args, "student_config", None):
        from ..train.model import parse_shape
        try:
            student_config = parse_shape(args.student_config)
        except ValueError as e:
            log(f"eval: --student-config {e}")
            return 2
    near = getattr(args, "near_hellos", None)
    args.near_hellos = NEAR_M if near is None else near
    if args.near_hellos < 0:
        log(f"eval: --near-hellos {args.near_hellos} must be >= 0")
        return 2
    repeats = getattr(args, "repeats", 1)
    if repeats < 1:
        log(f"eval: --repeats {repeats} must be >= 1")
        return 2
    first_repeat = getattr(args, "first_repeat", 0)
    if first_repeat < 0:
        log(f"eval: --first-repeat {first_repeat} must be >= 0")
        return 2
    args.members = getattr(args, "members", 3)
    args.ssl_epochs = getattr(args, "ssl_epochs", None)
    args.epochs = getattr(args, "epochs", None)
    if args.epochs is not None and args.epochs < 1:
        log(f"eval: --epochs {args.epochs} must be >= 1")
        return 2
    if args.ssl_epochs is not None and args.ssl_epochs < 1:
        log(f"eval: --ssl-epochs {args.ssl_epochs} must be >= 1")
        return 2
    if args.members < 1:
        log(f"eval: --members {args.members} must be >= 1")
        return 2
    if not 0.0 <= args.one_sided <= 1.0:
        log(f"eval: --one-sided {args.one_sided} must be in [0, 1]")
        return 2
    if args.one_sided and args.teacher_cache:
        log("eval: --one-sided and --teacher-cache do not go together: cached logits are looked up by flow, and a "
            "one-sided copy is a flow of its own")
        return 2
    if (args.one_sided or args.views) and not args.splits:
        log("eval: --one-sided and --views apply to the models the splits train: name --splits")
        return 2
    augment = None
    if getattr(args, "time_shift", 0) or getattr(args, "context_drop", 0.0):
        from ..train.student import Augment
        try:
            augment = Augment(args.time_shift, args.context_drop)
        except ValueError as e:
            log(f"eval: --time-shift/--context-drop: {e}")
            return 2
    if args.splits:
        lacking = []
        for mod in ("torch", "sklearn"):
            try:
                __import__(mod)
            except ImportError:
                lacking.append(mod)
        if lacking:
            log(f"eval: --splits trains models and needs {' and '.join(lacking)}: install the train extra "
                "(pip install '.[train]' in a checkout); without --splits eval scores the model on the base install")
            return 2
    if args.no_model and not args.splits:
        log("eval: nothing to evaluate: --no-model skips the shipped model, so name --splits (e.g. all)")
        return 2
    try:  # load_labelled checks --data and --labels before it reads any capture
        ds = load_labelled(args.data, args.labels, label_column=args.label_column,
                           encrypted_only=args.encrypted_only, pcaps=pcaps, params=params)
    except LabelsError as e:
        log(f"eval: {e}")
        return 2
    log(f"eval: {len(ds)} matched flows from {len(set(ds.pcap))} captures ({time.time() - t0:.1f}s)")
    if len(ds) == 0:
        log("eval: no flow matched the labels")
        return 2
    unlabelled = None
    if getattr(args, "transductive", False) and not getattr(args, "unlabelled", None):
        log("eval: --transductive says which unlabelled flows the self-supervised stages read: name --unlabelled DIR")
        return 2
    if getattr(args, "unlabelled", None):
        from ..capture.reader import capture_files
        from ..train.data import load_unlabelled

        files = capture_files(*args.unlabelled)
        recs, ctxs, names = load_unlabelled(files, params)
        if not recs:
            log(f"eval: --unlabelled {', '.join(args.unlabelled)}: no flows in {len(files)} capture files")
            return 2
        unlabelled = (recs, ctxs, names)
        log(f"eval: {len(recs)} unlabelled flows from {len(set(names))} captures for self-supervised training")
    transductive = bool(getattr(args, "transductive", False))
    res: dict = {"features": spec.to_dict(), "data": str(args.data), "labels": str(args.labels), "label_column": args.label_column,
                 "encrypted_only": bool(args.encrypted_only), "seed": args.seed, "repeats": repeats,
                 "first_repeat": first_repeat, "quick": bool(args.quick),
                 "student_config": student_config, "capture_balance": args.capture_balance,
                 "near_hellos": args.near_hellos, "members": args.members, "ssl_epochs": args.ssl_epochs,
                 "epochs": args.epochs,
                 "augment": None if augment is None else dataclasses.asdict(augment),
                 "one_sided": args.one_sided, "views": bool(args.views),
                 "unlabelled": None if unlabelled is None else {"dirs": list(args.unlabelled),
                                                                "flows": len(unlabelled[0]),
                                                                "transductive": transductive}}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    png_dir = Path(args.report).parent if args.report else out.parent
    png_dir.mkdir(parents=True, exist_ok=True)
    # The head metrics are the shipped model's; null (not 0.0) when it was skipped or failed, so a reader
    # of OUT.json cannot take "not measured" for "scored zero".
    head: dict = {"macro_f1": None, "macro_f1_min5": None, "weighted_f1": None, "accuracy": None, "flows": len(ds)}
    if not args.no_model:
        try:
            m = evaluate_model(ds, args.model, args.label_column)
        except ModelError as e:
            log(f"eval: {e}")
            return 2
        pred = m.pop("_pred")
        labels, cm = confusion(label_of(ds, args.label_column), pred)
        m["confusion"] = {"labels": labels, "counts": cm.tolist()}
        if confusion_png(label_of(ds, args.label_column), pred, png_dir / f"confusion_{args.label_column}_model.png",
                         f"shipped model, all flows, {args.label_column}"):
            m["confusion_png"] = f"confusion_{args.label_column}_model.png"
        res["model"] = m
        head = {k: m[k] for k in head}
        log(f"eval: model macroF1 {m['macro_f1']:.3f} min5 {m['macro_f1_min5']:.3f} acc {m['accuracy']:.3f}")
        if args.baselines_from:
            try:
                res["baselines"] = baselines_beside(ds, m, args.baselines_from, args.label_column, params, args.seed,
                                                    log)
            except LabelsError as e:
                log(f"eval: --baselines-from {e}")
                return 2
    res.update(head)
    res["flows"] = len(ds)
    if args.splits:
        names = list(SPLITS) if args.splits == "all" else [s.strip() for s in args.splits.split(",") if s.strip()]
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        bad = [m for m in methods if m not in METHODS + EXTRA_METHODS]
        if bad:
            log(f"eval: unknown methods {bad}; choose from {', '.join(METHODS + EXTRA_METHODS)}")
            return 2
        ds.labels = label_of(ds, args.label_column)
        bad = [s for s in names if s not in SPLITS + EXTRA_SPLITS]
        if bad:
            log(f"eval: unknown splits {bad}; choose from {', '.join(SPLITS + EXTRA_SPLITS)}")
            return 2
        if (repeats > 1 or first_repeat) and not any(s in KFOLDS for s in names):
            log(f"eval: --repeats and --first-repeat apply to the K-fold splits ({', '.join(KFOLDS)}); "
                f"none is named")
            return 2
        splits = make_splits(ds, [s for s in names if s in SPLITS], args.seed)
        res["splits"] = {}
        for name in names:
            if name in KFOLDS:
                try:
                    KFOLDS[name](ds, args.folds, args.seed)
                except ValueError as e:
                    log(f"eval: {e}")
                    return 2
        for name in names:
            if name in KFOLDS:
                res["splits"][name] = run_kfold(ds, args.label_column, methods, folds=args.folds, seed=args.seed,
                                                log=log, png_dir=png_dir, quick=args.quick, kind=name,
                                                teacher_cache=args.teacher_cache, device=args.device, spec=spec,
                                                student_config=student_config, unlabelled=unlabelled,
                                                capture_balance=args.capture_balance, hello_bytes=hello,
                                                repeats=repeats, first_repeat=first_repeat, near_hellos=args.near_hellos,
                                                members=args.members, ssl_epochs=args.ssl_epochs, epochs=args.epochs, augment=augment,
                                                transductive=transductive, one_sided=args.one_sided,
                                                views=args.views)
                out.write_text(json.dumps(res, indent=1))
                continue
            sp = splits[name]
            log(f"eval: split {name}: train {len(sp['train'])} / test {len(sp['test'])} flows")
            res["splits"][name] = run_split(ds, sp, args.label_column, methods, seed=args.seed, quick=args.quick,
                                            teacher_cache=args.teacher_cache, device=args.device, log=log,
                                            png_dir=png_dir, split_name=name, spec=spec,
                                            student_config=student_config, unlabelled=unlabelled,
                                            capture_balance=args.capture_balance, hello_bytes=hello,
                                            near_hellos=args.near_hellos, members=args.members,
                                            ssl_epochs=args.ssl_epochs, epochs=args.epochs, augment=augment,
                                            transductive=transductive, one_sided=args.one_sided,
                                            views=args.views)
            out.write_text(json.dumps(res, indent=1))  # partial results survive an interrupted run
    res["elapsed_s"] = round(time.time() - t0, 1)
    out.write_text(json.dumps(res, indent=1))
    if args.report:
        write_report(res, Path(args.report))
    log(f"eval: wrote {out} ({res['elapsed_s']}s)")
    return 0


def baselines_beside(ds, model_result: dict, source: Sequence[str], column: str, params, seed: int,
                     log: Callable[[str], None]) -> dict:
    """The size forests trained on the labelled captures `source` (DIR, CSV: the model's training data) and
    scored on the flows of `ds`, beside the model's result on them: the other-network target ("at least 2x a
    size forest trained on the same data in macro-F1, and its accuracy") measured in one run."""
    from ..train.data import load_labelled
    from .baselines import SizeBaseline

    train = load_labelled(source[0], source[1], label_column=column, params=params)
    y_train = label_of(train, column)
    y = label_of(ds, column)
    out: dict = {"trained_on": {"data": str(source[0]), "labels": str(source[1]), "flows": len(train)}}
    for kind in ("rf", "rf_shape"):
        f = SizeBaseline(kind, seed).fit(train.records, y_train)
        pred = [f.labels[i] for i in f.predict_proba(ds.records).argmax(1)] if len(ds) else []
        r = {k: v for k, v in metrics(y, pred).items() if k in ("macro_f1", "macro_f1_min5", "accuracy")}
        ref = r["macro_f1_min5"]
        r["model_ratio_macro_f1_min5"] = round(model_result["macro_f1_min5"] / ref, 3) if ref else None
        out[kind] = r
        log(f"eval: {kind} trained on {len(train)} flows of {source[0]}: macroF1 min5 {ref:.3f} acc "
            f"{r['accuracy']:.3f}; the model {model_result['macro_f1_min5']:.3f} / {model_result['accuracy']:.3f}"
            f" ({fmt(r['model_ratio_macro_f1_min5'])}x)")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="etool-sensor eval")
    add_eval_arguments(p)
    return eval_main(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
