"""Zero-shot: can the LLM teacher name a service it has no training flows for, from the label's words alone?

The ETooL paper claims it. The teacher answers by scoring each label name's token embedding against the frozen
LLM's last hidden state (train/teacher.py, the verbaliser), so a name it never trained on can still be scored.
Here every flow of the held-out labels leaves the training set, the teacher trains on the rest, and each
held-out flow is then named from the held-out names (zero-shot, chance 1/k) and from all names (generalised
zero-shot: does a held-out label ever beat the trained ones?). A new name's bias is its score centred on the
training flows, as the teacher centres its own answers before training (TeacherNet.init_bias).

    python -m etool_sensor.lab.zero_shot --data ../shared/data/ndpi/pcap --labels ../shared/data/ndpi/labels.csv \\
        --held-out Chat,VPN,Game,Media --held-out Cloud,Download,SocialNetwork,Email --json zero_shot.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .splits import capture_groups

if TYPE_CHECKING:  # for annotations only
    from ..train.data import LabelledSet


def balanced_accuracy(y: Sequence[str], pred: Sequence[str], classes: Sequence[str]) -> float:
    """Mean recall over `classes` (those with flows in y): chance is 1 / len(classes) whatever their sizes."""
    rec = [np.mean([p == c for t, p in zip(y, pred) if t == c]) for c in classes if c in set(y)]
    return float(np.mean(rec)) if rec else 0.0


def zero_shot_run(ds: LabelledSet, held_out: Sequence[str], *, seed: int = 0, quick: bool = False, device: str = "cpu",
                  log: Callable[[str], None] = print, boot: int = 1000) -> dict:
    """Train the LLM teacher without the flows of `held_out` and name those flows; see the module doc."""
    import torch

    from ..train.teacher import answer_vectors, train_teacher

    labels = list(ds.labels)
    unseen = [c for c in dict.fromkeys(held_out) if c in set(labels)]
    if len(unseen) < 2:
        raise ValueError(f"zero-shot needs at least 2 held-out labels with flows; have {unseen or 'none'}")
    held = set(unseen)
    tr = [i for i, c in enumerate(labels) if c not in held]
    te = [i for i, c in enumerate(labels) if c in held]
    train, test = ds.subset(tr), ds.subset(te)
    log(f"zero-shot: hold out {', '.join(unseen)} ({len(te)} flows); teacher trains on {len(tr)} flows "
        f"of {len(set(train.labels))} labels")
    t0 = time.time()
    teacher = train_teacher(train, label_column=ds.label_column, quick=quick, device=device, seed=seed,
                            use_llm=True, log=log)
    net, head = teacher.net, teacher.net.heads[teacher.label_column]
    rng = np.random.default_rng(seed)
    sample = sorted(rng.choice(len(tr), min(len(tr), 512), replace=False).tolist())
    h_tr = teacher.hidden_states([train.records[i] for i in sample], [train.contexts[i] for i in sample])
    h_te = teacher.hidden_states(test.records, test.contexts)
    with torch.no_grad():
        vec = answer_vectors(net.lm.get_input_embeddings().weight.detach(), net.tokenizer, unseen)
        bias = -(head.scale * h_tr @ vec.T).mean(0)
        z_new = (head.scale * h_te @ vec.T + bias).numpy()
        z_all = np.concatenate([head(h_te).numpy(), z_new], 1)
    names_all = list(teacher.labels) + unseen
    y = list(test.labels)
    zsl = [unseen[j] for j in z_new.argmax(1)]
    gzsl = [names_all[j] for j in z_all.argmax(1)]
    k = len(unseen)
    shares = {c: round(y.count(c) / len(y), 4) for c in unseen}
    bal = balanced_accuracy(y, zsl, unseen)
    groups = np.asarray(capture_groups(test))
    gnames = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in gnames]
    boots = []
    for _ in range(boot):  # whole capture groups: flows of one capture succeed or fail together
        idx = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        boots.append(balanced_accuracy([y[i] for i in idx], [zsl[i] for i in idx], unseen))
    ci = [round(float(np.percentile(boots, 2.5)), 4), round(float(np.percentile(boots, 97.5)), 4)]
    out = {
        "held_out": unseen, "test_flows": len(te), "train_flows": len(tr), "train_labels": len(teacher.labels),
        "test_captures": len(set(test.pcap)), "capture_groups": len(gnames), "seed": seed, "quick": quick,
        "teacher_s": round(time.time() - t0, 1),
        "zero_shot": {
            "accuracy": round(float(np.mean([a == b for a, b in zip(y, zsl)])), 4),
            "balanced_accuracy": round(bal, 4), "balanced_accuracy_ci95": ci, "chance": round(1 / k, 4),
            "majority_share": max(shares.values()), "label_shares": shares,
            "recall": {c: round(float(np.mean([p == c for t, p in zip(y, zsl) if t == c])), 4) for c in unseen},
            "predicted_shares": {c: round(zsl.count(c) / len(zsl), 4) for c in unseen},
        },
        "generalised": {
            "named_unseen_share": round(float(np.mean([p in held for p in gzsl])), 4),
            "accuracy": round(float(np.mean([a == b for a, b in zip(y, gzsl)])), 4),
        },
    }
    z = out["zero_shot"]
    z["verdict"] = "above chance" if ci[0] > z["chance"] else "below chance" if ci[1] < z["chance"] else "chance"
    log(f"zero-shot [{', '.join(unseen)}]: accuracy {z['accuracy']:.3f} (majority label {z['majority_share']:.3f}), "
        f"balanced accuracy {bal:.3f} (95% CI {ci[0]:.3f}..{ci[1]:.3f}, {len(gnames)} capture groups) against "
        f"chance {z['chance']:.3f}: {z['verdict']}; with every name, a held-out name wins for "
        f"{out['generalised']['named_unseen_share']:.1%} of the flows")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m etool_sensor.lab.zero_shot", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="directory holding the captures named in the CSV")
    p.add_argument("--labels", required=True, help="labels CSV (columns of nDPI labels.csv)")
    p.add_argument("--held-out", action="append", required=True, metavar="LABELS",
                   help="comma list of service labels to leave out of training (repeatable: one teacher each)")
    p.add_argument("--json", required=True, help="write the results here")
    p.add_argument("--all-flows", action="store_true", help="cleartext flows too (default: encrypted only)")
    p.add_argument("--pcaps", help="comma list: restrict to these captures")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a tiny teacher (tests)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    from ..flows import FlowParams
    from ..train.data import LabelsError, load_labelled
    from ..train.threads import set_threads

    set_threads()

    try:
        ds = load_labelled(a.data, a.labels, label_column="category", encrypted_only=not a.all_flows,
                           pcaps=a.pcaps.split(",") if a.pcaps else None, params=FlowParams())
    except LabelsError as e:
        log(f"zero-shot: {e}")
        return 2
    ds.labels = list(ds.service)
    runs = []
    for h in a.held_out:
        try:
            runs.append(zero_shot_run(ds, [c.strip() for c in h.split(",") if c.strip()], seed=a.seed,
                                      quick=a.quick, device=a.device, log=log))
        except ValueError as e:
            log(f"zero-shot: {e}")
            return 2
        Path(a.json).write_text(json.dumps({"data": a.data, "flows": len(ds), "runs": runs}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
