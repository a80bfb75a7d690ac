"""`etool-sensor train`: SSL pretraining -> teacher (unless --no-teacher) -> student -> ONNX int8 -> shape forest and
fingerprint tables -> priors and drift reference: a whole model package from labelled captures. `--recipe NAME`
takes the settings of a bundled package (train/recipes/), so the repository rebuilds what it ships."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from etool_sensor.flows import DEFAULT_HELLO_BYTES


RECIPES = Path(__file__).parent / "recipes"
# the options a recipe may set: parsed as None when not given, so that a recipe fills exactly those left out
DEFAULTS = {"name": "etool-student", "version": "0.1.0", "no_teacher": False, "student_config": None,
            "hello_bytes": DEFAULT_HELLO_BYTES, "no_forest": False, "epochs": None, "ssl_epochs": None,
            "quantize": "static", "seed": 0, "members": 1, "one_sided": 0.0}
RECIPE_KEYS = (*DEFAULTS, "torch_threads")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", metavar="NAME|YAML",
                   help="settings of a known build: 'default' or 'fast' (the bundled packages, train/recipes/) or a "
                        "YAML file of the same keys; options given on the command line win")
    p.add_argument("--data", required=True, help="directory of labelled captures (e.g. ../shared/data/ndpi/pcap)")
    p.add_argument("--labels", required=True, help="labels.csv (nDPI verdicts per flow)")
    p.add_argument("--out", required=True, help="model package directory to write")
    p.add_argument("--label-column", default="category", choices=["category", "app"],
                   help="label of the primary head used by eval (both heads are always trained)")
    p.add_argument("--unlabelled", action="append", default=None,
                   help="capture directory for self-supervised pretraining (repeatable; default: --data, every "
                        "capture in it, labelled or not). Keep traffic you will evaluate on out of it")
    p.add_argument("--quick", action="store_true", help="a few epochs on a sample (tests, smoke runs)")
    p.add_argument("--no-teacher", action="store_true", default=None, help="skip the LLM teacher (CE only)")
    p.add_argument("--teacher", dest="no_teacher", action="store_false", default=None,
                   help="distil from the LLM teacher even where the recipe says no_teacher")
    p.add_argument("--no-ssl", action="store_true", help="skip self-supervised pretraining")
    p.add_argument("--no-payload", action="store_true", help="ablation: no datagram tokens")
    p.add_argument("--use-ports", action="store_true", help="ablation: responder port as a feature")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device for the teacher")
    p.add_argument("--epochs", type=int, default=None, help="student epochs (default 30, quick 4)")
    p.add_argument("--ssl-epochs", type=int, default=None, help="SSL epochs (default 6, quick 1)")
    p.add_argument("--quantize", choices=["static", "dynamic", "none"], default=None,
                   help="model.onnx: int8 static (calibrated, batch-independent; default), int8 dynamic, or fp32")
    p.add_argument("--student-config", default=None, metavar="JSON",
                   help='student encoder shape, e.g. \'{"layers": 1, "pkt_stride": 4, "dgram_stride": 16}\' '
                        "(the bundled fast model); default: train/model.py EncoderConfig")
    p.add_argument("--hello-bytes", type=int, default=None, metavar="H",
                   help="read TLS hellos whole up to H bytes (flow.hello_bytes) and join the fingerprint tables "
                        "(fingerprints.py; service and app) with the forest "
                        f"(default {DEFAULT_HELLO_BYTES}; 0: the forest alone)")
    p.add_argument("--no-forest", action="store_true", default=None,
                   help="a student package only: do not join the shape forest to its service head "
                        "(train/forest.py, export/hybrid.py; the bundled default model has it)")
    p.add_argument("--forest", dest="no_forest", action="store_false", default=None,
                   help="join the shape forest even where the recipe says no_forest")
    p.add_argument("--name", default=None, help=f"package name (default {DEFAULTS['name']})")
    p.add_argument("--version", default=None, help=f"package version (default {DEFAULTS['version']})")
    p.add_argument("--seed", type=int, default=None, help="seed of every stage (default 0)")
    p.add_argument("--members", type=int, default=None, metavar="M",
                   help="the student is the mean of M whole trainings (self-supervised stage included) with seeds "
                        "seed .. seed + M - 1: one graph, M times the student's CPU per flow (default 1)")
    p.add_argument("--one-sided", type=float, default=None, metavar="P",
                   help="also train on copies of a share P of the labelled flows seen from one side only (the "
                        "side drawn per flow), for sensors behind asymmetric routing (default 0, as in the "
                        "bundled recipes)")
    p.add_argument("--teacher-cache", help="npz of teacher logits (train.teacher_logits.save_teacher_logits format: ids, "
                   "logits, labels) for the training flows, instead of training a teacher here")
    p.add_argument("--quick-pcaps", type=int, default=40, help="captures used by --quick")


def apply_recipe(args: argparse.Namespace) -> dict:
    """Fill `args` from the recipe it names (train/recipes/NAME.yaml or a path): a recipe key sets an option the
    command line left out (torch_threads: unless ETOOL_TORCH_THREADS is set). Returns the recipe (with its
    `recipe` source) for the manifest; ValueError if bad."""
    import yaml

    ref = args.recipe
    path = Path(ref) if ref.endswith((".yaml", ".yml")) else RECIPES / f"{ref}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml")))
        raise ValueError(f"no recipe {ref!r} (known: {known}; or a YAML file)")
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not YAML: {e}") from None
    bad = sorted(set(recipe) - set(RECIPE_KEYS)) if isinstance(recipe, dict) else ["(not a mapping)"]
    if bad:
        raise ValueError(f"{path}: unknown recipe keys {bad}; known: {', '.join(RECIPE_KEYS)}")
    for key, value in recipe.items():
        if key == "torch_threads":  # the weights depend on the thread count: a recipe fixes it
            args.torch_threads = int(value)
            continue
        if key == "student_config":
            value = json.dumps(value) if value else None
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return {"recipe": path.name, **recipe}


def _import_export(module: str = "package"):
    """etool_sensor.export.<module> (the checkout's export/, installed under that name), imported when used: it
    needs onnx and skl2onnx."""
    import importlib

    return importlib.import_module(f"etool_sensor.export.{module}")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train_main(args: argparse.Namespace) -> int:
    recipe = None
    if getattr(args, "recipe", None):
        try:
            recipe = apply_recipe(args)
        except ValueError as e:
            _log(f"train: --recipe {e}")
            return 2
    for key, value in DEFAULTS.items():  # what neither the command line nor the recipe set
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    from .threads import pinned_threads

    with pinned_threads(getattr(args, "torch_threads", None)):
        return _train(args, recipe)


def _train(args: argparse.Namespace, recipe: dict | None) -> int:
    import numpy as np

    from etool_sensor.features import FeatureSpec, encode
    from etool_sensor.flows import FlowParams
    build_package = _import_export().build_package

    from ..capture.reader import capture_files
    from .data import (LabelsError, check_labelled_inputs, in_captures, load_labelled, load_unlabelled,
                       with_one_sided)
    from .student import ensemble_of, train_student
    from .threads import set_threads

    t0 = time.time()
    shape = None
    if getattr(args, "student_config", None):
        from .model import parse_shape
        try:
            shape = parse_shape(args.student_config)
        except ValueError as e:
            _log(f"train: --student-config {e}")
            return 2
    if args.members < 1:
        _log(f"train: --members {args.members} must be >= 1")
        return 2
    for opt, v in (("--epochs", args.epochs), ("--ssl-epochs", args.ssl_epochs)):
        if v is not None and v < 1:
            _log(f"train: {opt} {v} must be >= 1")
            return 2
    try:
        args.one_sided = float(args.one_sided)  # a recipe may hold it as text
    except (TypeError, ValueError):
        args.one_sided = float("nan")
    if not 0.0 <= args.one_sided <= 1.0:
        _log(f"train: --one-sided {args.one_sided} must be a share in [0, 1]")
        return 2
    if args.one_sided and args.teacher_cache:
        _log("train: --one-sided and --teacher-cache do not go together (cached logits are looked up by flow)")
        return 2
    try:
        check_labelled_inputs(args.data, args.labels, args.label_column)
    except LabelsError as e:
        _log(f"train: {e}")
        return 2
    threads = set_threads()
    import torch

    torch.manual_seed(args.seed)  # the SSL encoder's initial weights and dropout: the same seed, the same model
    # TLS hellos whole for the hello table (fingerprints.py); a student alone reads only its window
    params = FlowParams(hello_bytes=0 if args.no_forest else args.hello_bytes)
    data = Path(args.data)
    pcaps = None
    if args.quick:
        import csv
        with open(args.labels, newline="") as f:
            names = sorted({r["pcap"] for r in csv.DictReader(f)})
        rng = np.random.default_rng(args.seed)
        pcaps = sorted(rng.choice(names, size=min(args.quick_pcaps, len(names)), replace=False).tolist())
    train = load_labelled(data, args.labels, label_column=args.label_column, params=params, pcaps=pcaps)
    if len(train) == 0:
        _log("train: no labelled flows found")
        return 2
    _log(f"train: {len(train)} labelled flows from {len(set(train.pcap))} captures ({time.time() - t0:.0f}s)")
    labelled = train  # the flows as labelled: the training prior is theirs, not the copies'
    if args.one_sided:
        train = with_one_sided(train, args.one_sided, args.seed)
        _log(f"train: + {len(train) - len(labelled)} copies seen from one side (--one-sided {args.one_sided})")
    spec = FeatureSpec.from_params(params, use_ports=args.use_ports)

    # stage 1: self-supervised pretraining of the encoder on every capture we have
    enc_state = None
    ssl_info: dict = {"used": False}
    if not args.no_ssl:
        from .model import EncoderConfig, TrafficEncoder
        from .ssl import pretrain
        roots = args.unlabelled or [str(data)]  # never the sets kept apart for evaluation
        files = capture_files(*roots)
        if args.quick:
            files = [f for f in files if in_captures(f, set(pcaps or []))][:args.quick_pcaps] or files[:10]
        recs, ctxs, names = load_unlabelled(files, params)
        cfg = EncoderConfig.from_spec(spec, use_payload=not args.no_payload, **(shape or {}))

        def ssl_encoder(seed: int) -> dict:
            enc = TrafficEncoder(cfg)
            pretrain(enc, recs, ctxs, spec, epochs=args.ssl_epochs, quick=args.quick, seed=seed, log=_log,
                     groups=names)
            return enc.state_dict()

        ts = time.time()
        enc_state = ssl_encoder(args.seed)
        ssl_info = {"used": True, "flows": len(recs), "captures": len(set(names)), "seconds": round(time.time() - ts, 1)}

    # teacher (engineer T's SmolLM2 teacher) when available
    teacher, teacher_info = None, {"used": False}
    if args.teacher_cache:
        from .teacher_logits import load_cached_teacher
        teacher = load_cached_teacher(train, Path(args.teacher_cache))
        if teacher is None:
            _log(f"train: {args.teacher_cache} does not cover these training flows")
            return 2
        teacher_info = {"used": True, "source": f"cached logits {Path(args.teacher_cache).name}"}
    elif not args.no_teacher:
        try:
            from .teacher import train_teacher
        except ImportError as e:
            _log(f"train: teacher unavailable ({e}); continuing without distillation")
        else:
            ts = time.time()
            teacher = train_teacher(labelled, args.label_column, quick=args.quick, device=args.device)
            teacher_info = {"used": True, "model": getattr(teacher, "name", "SmolLM2-135M"),
                            "seconds": round(time.time() - ts, 1), "device": args.device}

    sts = []
    for i in range(args.members):  # member i: the whole training with seed + i (self-supervised stage included)
        seed = args.seed + i
        if i:
            _log(f"train: ensemble member {i + 1}/{args.members} (seed {seed})")
            torch.manual_seed(seed)
            enc_state = None if args.no_ssl else ssl_encoder(seed)
        sts.append(train_student(train, label_column=args.label_column, teacher=teacher,
                                 use_payload=not args.no_payload, use_ports=args.use_ports,
                                 ssl_init=enc_state is not None, quick=args.quick, seed=seed, log=_log,
                                 epochs=args.epochs, encoder_state=enc_state, spec=spec, config=shape))
    st = sts[0] if len(sts) == 1 else ensemble_of(sts)
    training = {
        "data": {"labelled": str(args.labels), "captures": str(data)},
        "flows": len(labelled),
        "one_sided_copies": len(train) - len(labelled),
        "pcaps": len(set(train.pcap)),
        "label_column": args.label_column,
        "seconds": round(time.time() - t0, 1),
        "torch_threads": threads,
        "teacher": teacher_info,
        "ssl": ssl_info,
        "student": dict(st.info),
        "quick": bool(args.quick),
        "recipe": recipe,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    st.info["training"] = dict(training)
    st.save(out / "student.pt")
    feats = encode(train.records[:2000], train.contexts[:2000], spec)
    training["seconds"] = round(time.time() - t0, 1)
    m = build_package(st, out, name=args.name, version=args.version, training=training, check_feats=feats,
                      quantize=args.quantize)
    if not args.no_forest:
        from .forest import forest_spec, train_forest

        ts = time.time()
        fspec = forest_spec(spec)
        forest = train_forest(train.records, train.contexts, list(train.service), spec=fspec, seed=args.seed,
                              quick=args.quick)
        tables = None
        if params.hello_bytes:
            from etool_sensor.fingerprints import fit_tables

            tables = fit_tables(train.records, {"service": train.service, "app": train.app}, m["label_sets"],
                                spec.payload_packets)
        check = encode(train.records[:2000], train.contexts[:2000],
                       dataclasses.replace(fspec, hello_bytes=params.hello_bytes))
        hy = _import_export("hybrid")
        m = hy.attach_forest(out, forest, check, tables=tables, hello_bytes=params.hello_bytes, log=_log,
                             priors=hy.priors_entry(labelled.service, m["label_sets"]["service"]))
        m["training"]["forest_seconds"] = round(time.time() - ts, 1)
        (out / "manifest.json").write_text(json.dumps(m, indent=1) + "\n")
    _drift_reference(out, data, pcaps)
    par = m["parity"].get("int8_vs_torch", m["parity"].get("fp32_vs_torch", {}))
    _log(f"train: wrote {out} in {time.time() - t0:.0f}s; parity {json.dumps(par)}")
    return 0


def _drift_reference(pkg: Path, data: Path, pcaps) -> None:
    """The package's drift reference (etool_sensor/drift.py): its verdicts on every TCP/UDP flow of the
    training captures, as classify reads them with the default settings."""
    from etool_sensor.config import Config
    from etool_sensor.drift import captures_in, reference_of, write_reference
    from etool_sensor.runtime import load_model

    from .data import in_captures

    keep = None if pcaps is None else set(pcaps)
    caps = [p for p in captures_in(data) if keep is None or in_captures(p, keep)]
    ref = reference_of(load_model(pkg, threads=1), caps, Config(),
                       f"training captures ({data}), {len(caps)} captures, every TCP/UDP flow")
    write_reference(pkg, ref)
    _log(f"train: drift reference from {ref['flows']} flows of {len(caps)} captures")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="etool-sensor train")
    add_train_arguments(p)
    return train_main(p.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
