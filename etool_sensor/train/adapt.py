"""Fit a hybrid model package to the traffic of the network it watches: `etool-sensor adapt`.

The base package (the bundled default unless --model) keeps its student graph bit for bit. Around it the adapted
package gets, from the local labelled flows (nDPI's weak labels, labeling.py):

* **the fingerprint tables** of both heads: the base's counts plus the local flows' (fingerprints.HelloTable),
  near hellos included;
* **a local shape forest** (train/forest.py's features and settings) beside the base's: the graph's forest output
  becomes (1 - a) * base forest + a * local forest;
* **new labels** that only the local network has: appended to the head's label set; the student gives them the
  score of an average label (its log-sum-exp minus log K), so the forest and the tables decide them;
* **a prior correction** of the service head: one bias per label added to the hybrid's logits, fitted by maximum
  likelihood on local flows the forest and tables did not see (2 folds by capture), with an L2 pull to 0. It moves
  the verdicts towards the local class mix: nDPI's corpus has few Web flows, real networks mostly Web. A Gaussian
  prior on the biases (BIAS_SD) keeps a handful of local flows from moving them far.

The forest weight `a` is chosen from FOREST_WEIGHTS by the same cross-fitted likelihood. Nothing here needs torch
or a GPU; sklearn, skl2onnx and onnx (the `adapt` extra) build and write the graph.

Before it writes, it holds back HOLDOUT of the local captures (by file), fits the same recipe on the others and
prints the base package's and the adapted one's scores on the held-back captures. The written package is then
fitted on every local capture. When the adapted recipe is not better on the held-back captures the command says
so on stderr and exits EXIT_NOT_BETTER (the package is still written, for inspection).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .adapted_package import digest, write_package
from .local_fit import AdaptError, LocalFlows, fit_parts, local_flows, score, score_line, split_captures

EXIT_OK, EXIT_INPUT, EXIT_TRUNCATED, EXIT_NOT_BETTER = 0, 2, 3, 5

LOCAL_LABELS = "local_labels.csv"  # in the package: the labels `adapt CAPTURE...` wrote with nDPI
HOLDOUT = 0.25  # share of the local captures held back for the before/after check


@dataclass
class Report:
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    scope: str
    held_captures: int
    better: bool | None
    manifest: dict[str, Any]
    truncated: list[str] = field(default_factory=list)  # local captures read up to a cut


def held_scores(model: Any, lf: LocalFlows, kept: np.ndarray, held: np.ndarray, seed: int,
                log: Callable[[str], None]) -> tuple[dict, dict, str]:
    """Base and adapted (fitted on `kept`) scores on the `held` flows: encrypted flows when at least 20 are
    held back, else all."""
    enc = held[lf.encrypted[held]]
    sel, scope = (enc, "encrypted flows") if len(enc) >= 20 else (held, "all flows")
    parts = fit_parts(model, lf, kept, seed=seed, log=log)
    y = [lf.service[i] for i in sel]
    before = [model.label_sets["service"][j] for j in model.predict_proba(
        [lf.records[i] for i in sel], [lf.contexts[i] for i in sel]).argmax(1)]
    after = [parts.service_labels[j] for j in parts.service_proba(lf, sel).argmax(1)]
    return score(y, before), score(y, after), scope


def adapt(base: str | Path | None, data_dir: str | Path, labels_csv: str | Path, out: str | Path, *,
          holdout: float = HOLDOUT, seed: int = 0, name: str | None = None, version: str | None = None,
          progress: bool = False, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
          one_step: bool = False, base_model: Any = None) -> Report:
    """Adapt `base` to the labelled local flows of `data_dir`/`labels_csv` and write the package `out`
    (`one_step`: the labels are the ones `adapt CAPTURE...` just wrote, and go into the package;
    `base_model`: `base` already loaded by preflight)."""
    from ..runtime import model_window
    from .data import LabelsError, load_labelled

    out = Path(out)
    model = base_model if base_model is not None else preflight(base, out)
    errors: list[str] = []
    try:
        ds = load_labelled(data_dir, labels_csv, label_column="category", params=model_window(model.spec),
                           progress=progress, on_error=lambda n, e: errors.append(f"{n}: {e}"))
    except LabelsError as e:
        raise AdaptError(str(e)) from None
    for e in errors:
        log(f"etool-sensor: warning: skipped {e}")
    if ds.truncated and not one_step:  # adapt CAPTURE... said so when it labelled them
        log(f"etool-sensor: warning: truncated capture{'s' if len(ds.truncated) > 1 else ''} "
            f"({', '.join(ds.truncated)}): their flows up to the cut were used")
    if len(ds) < 10 and one_step:
        raise AdaptError(f"nDPI labelled only {len(ds)} flows of the captures; adapt needs at least 10")
    if len(ds) < 10:
        raise AdaptError(f"{labels_csv}: only {len(ds)} labelled flows matched captures under {data_dir}; "
                         "adapt needs local flows (is --data the --root the labels were written with?)")
    lf = local_flows(model, ds)
    log(f"adapt: {len(lf)} labelled local flows ({int(lf.encrypted.sum())} encrypted) from "
        f"{len(set(lf.pcap))} captures; base {model.id}")
    kept_caps, held_caps = split_captures(lf.pcap, holdout, seed, lf.encrypted.tolist())
    before = after = None
    scope = ""
    if held_caps:
        kept = np.array([i for i, p in enumerate(lf.pcap) if p in kept_caps], np.int64)
        held = np.array([i for i, p in enumerate(lf.pcap) if p in held_caps], np.int64)
        before, after, scope = held_scores(model, lf, kept, held, seed, log)
    elif holdout > 0:
        log("adapt: warning: a single local capture: nothing to hold back, no before/after")
    else:
        log("adapt: --holdout 0: nothing held back, no before/after")
    parts = fit_parts(model, lf, np.arange(len(lf)), seed=seed, log=log)
    lineage = {"base": model.id, "base_sha256": model.manifest["sha256"],
               "local_sha256": digest(labels_csv, data_dir, ds.pcap),
               # one step: the labels go with the package, so that local_sha256 can be checked again
               "local_labels": LOCAL_LABELS if one_step else str(labels_csv),
               "flows": len(lf), "captures": len(set(lf.pcap)),
               "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()}
    if before is not None:
        lineage["held_back"] = {"captures": len(held_caps), "scope": scope, "before": before, "after": after}
    man = write_package(model, parts, lf, out, lineage=lineage, name=name, version=version)
    if one_step:
        shutil.copyfile(labels_csv, out / LOCAL_LABELS)
    better = None if before is None else verdict(before, after)
    return Report(before, after, scope, len(held_caps), better, man, list(ds.truncated))


def verdict(before: dict[str, Any], after: dict[str, Any]) -> bool | None:
    """Whether the adapted package did no worse on the held-back captures: False when one score (macro-F1
    over classes with >= 5 flows, accuracy) is lower and the other not higher (docs/adapt.md; a tie is no
    worse); None without a class of >= 5 held-back flows, where there is nothing to judge."""
    if min(before["classes_min5"], after["classes_min5"]) == 0:
        return None
    f1, f1_0, acc, acc_0 = after["macro_f1_min5"], before["macro_f1_min5"], after["accuracy"], before["accuracy"]
    return not ((f1 < f1_0 or acc < acc_0) and f1 <= f1_0 and acc <= acc_0)


def preflight(base: str | Path | None, out: Path) -> Any:
    """What adapt needs before any work: a place for the new package and a base package that loads (the
    base, loaded). `adapt CAPTURE...` runs it before labelling, so a bad -o or --model costs no nDPI run."""
    from ..runtime import ModelError, load_model

    if not out.resolve().parent.is_dir():
        raise AdaptError(f"{out.parent}: no such directory (it holds the new package -o {out})")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AdaptError(f"{out}: exists and is not an empty directory (give a new one)")
    for module in ("sklearn", "skl2onnx", "onnx"):  # the adapt extra, checked before the work that needs it
        importlib.import_module(module)
    try:
        return load_model(base, threads=2)
    except ModelError as e:
        raise AdaptError(str(e)) from None


def add_adapt_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("captures", nargs="*", metavar="CAPTURE",
                   help="captures (files, or directories of them) to label with nDPI (labeling.py) and adapt to; "
                        "or give --data and --labels")
    p.add_argument("--data", metavar="DIR", help="directory the labels CSV's `pcap` paths are relative to")
    p.add_argument("--labels", metavar="CSV", help="labels CSV (docs/labels.md), e.g. from `etool-sensor label`")
    p.add_argument("-o", "--output", required=True, metavar="PKG", help="new model package directory")
    p.add_argument("--model", metavar="BASE", help="base model package (default: the bundled default)")
    p.add_argument("--holdout", type=float, default=HOLDOUT, metavar="SHARE",
                   help=f"share of the local captures held back for the before/after check (default {HOLDOUT})")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-back captures and the forest")
    p.add_argument("--name", help="package name (default: the base's)")
    p.add_argument("--version", help="package version (default: BASE_VERSION+local.DIGEST)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no report (warnings stay)")


def adapt_main(args: argparse.Namespace) -> int:
    prog = "etool-sensor"
    quiet = args.quiet
    log = (lambda s: None) if quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    progress = not quiet and sys.stderr.isatty()
    tmpdir = base_model = None
    partial = False  # labels missing for part of the captures (cut, or unreadable to nDPI)
    try:
        if args.captures and (args.data or args.labels):
            raise AdaptError("give captures, or --data and --labels, not both")
        if not args.captures and not (args.data and args.labels):
            raise AdaptError("give captures to label, or --data DIR and --labels CSV")
        if not 0 <= args.holdout < 1:
            raise AdaptError(f"--holdout {args.holdout}: must be in [0, 1)")
        if args.captures:
            from ..labeling import LabelError, check_captures, default_root, write_labels

            data = default_root(args.captures)  # a directory named is the root of the labels' paths
            try:  # directories expanded, every file checked
                args.captures = check_captures(args.captures, warn=lambda w: print(f"{prog}: warning: {w}",
                                                                                   file=sys.stderr))
            except LabelError as e:
                raise AdaptError(str(e)) from None
            base_model = preflight(args.model, Path(args.output))
            tmpdir = tempfile.mkdtemp(prefix="etool-adapt-")
            labels = Path(tmpdir) / "labels.csv"
            try:
                st = write_labels(args.captures, labels, data, progress=progress)
            except LabelError as e:
                raise AdaptError(str(e)) from None
            partial = bool(st.truncated or st.warnings)  # exit 3, as label gives
            if st.truncated:
                print(f"{prog}: warning: truncated capture(s) ({', '.join(st.truncated)}): labelled up to the cut",
                      file=sys.stderr)
            for w in st.warnings:
                print(f"{prog}: warning: {w}", file=sys.stderr)
            log(f"adapt: labelled {st.flows} flows of {st.captures} captures ({st.encrypted} encrypted)")
        else:
            data, labels = Path(args.data), Path(args.labels)
        try:
            rep = adapt(args.model, data, labels, args.output, holdout=args.holdout, seed=args.seed,
                        name=args.name, version=args.version, progress=progress, log=log,
                        one_step=bool(args.captures), base_model=base_model)
        except AdaptError as e:
            if tmpdir:  # the nDPI run is not lost: its labels stay beside where the package would be
                kept = Path(str(args.output).rstrip("/") + ".labels.csv")
                shutil.copyfile(labels, kept)
                raise AdaptError(f"{e}; the labels written stay in {kept} (adapt --data {data} --labels "
                                 f"{kept} reuses them)") from None
            raise
    except AdaptError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except ImportError as e:
        print(f"{prog}: error: adapt needs the Python module {e.name!r}: pip install '.[adapt]' in a checkout of etool",
              file=sys.stderr)
        return EXIT_INPUT
    except OSError as e:
        print(f"{prog}: error: {e.filename or args.output}: {e.strerror or e}", file=sys.stderr)
        return EXIT_INPUT
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
    m = rep.manifest
    if rep.before is not None and not quiet:
        print(f"held-back captures: {rep.held_captures}, {rep.scope}:\n{score_line('before', rep.before)}\n"
              f"{score_line('after', rep.after)}", file=sys.stderr)
        if rep.better is None:
            print(f"{prog}: note: no class has 5 held-back flows: no before/after verdict (label more captures)",
                  file=sys.stderr)
    if not quiet:
        new = m["adapt"]["new_service_labels"]
        print(f"{prog}: wrote {args.output}: {m['name']}@{m['version']} from {m['lineage']['base']}, "
              f"{m['lineage']['flows']} local flows"
              + (f", new service labels {', '.join(new)}" if new else ""), file=sys.stderr)
    if rep.better is False:
        print(f"{prog}: WARNING: the adapted package is NOT better than {m['lineage']['base']} on the held-back "
              f"captures (macro-F1 {rep.before['macro_f1_min5']:.3f} -> {rep.after['macro_f1_min5']:.3f}, accuracy "
              f"{rep.before['accuracy']:.3f} -> {rep.after['accuracy']:.3f}); check before deploying it",
              file=sys.stderr)
        return EXIT_NOT_BETTER
    return EXIT_TRUNCATED if partial or rep.truncated else EXIT_OK
