"""Stage 2: supervised training of the student (both heads) with optional distillation from the teacher.

Loss on the head named by `label_column`:  (1 - alpha) * CE_w(labels) + alpha * T^2 * KL(teacher_T || student_T)
and class-weighted CE on the other head. Class weights are count^-0.5 (normalised), which with macro-F1 as
the metric works better here than plain CE (majority classes win) or full inverse frequency (rare classes
with a handful of flows get over-fitted). The encoder is initialised from stage-1 self-supervised
pretraining (ssl.py) when `ssl_init`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from etool_sensor.context import Context
from etool_sensor.features import IAT_BUCKETS, FeatureSpec, encode
from etool_sensor.flows import FlowRecord

from .model import EncoderConfig, StudentClassifier, StudentEnsemble, input_names
from .threads import set_threads

IGNORE = -100
_SSL_CACHE: dict = {}  # one pretrained encoder state, keyed by the flows and config it was trained on
HEAD_OF = {"category": "service", "app": "app", "label": "app", "master": "app"}


def to_tensors(feats: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feats.items()}


@dataclass
class Student:
    """A trained student: the torch model, its preprocessing and label sets."""

    model: StudentClassifier
    spec: FeatureSpec
    label_sets: dict[str, list[str]]
    label_column: str = "category"
    config: EncoderConfig = field(default_factory=EncoderConfig)
    history: list[dict[str, float]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def head(self) -> str:
        return HEAD_OF.get(self.label_column, "service")

    @property
    def labels(self) -> list[str]:
        return self.label_sets[self.head]

    def logits(self, records: Sequence[FlowRecord], contexts: Sequence[Context | None] | None,
               batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        m = self.model.eval()
        names = input_names(self.config)
        outs_s, outs_a = [], []
        with torch.no_grad():
            for i in range(0, len(records), batch):
                f = to_tensors(encode(records[i:i + batch], contexts[i:i + batch] if contexts is not None else None,
                                      self.spec))
                s, a = m(*[f[k] for k in names])
                outs_s.append(s.numpy())
                outs_a.append(a.numpy())
        if not outs_s:
            return (np.zeros((0, len(self.label_sets["service"])), np.float32),
                    np.zeros((0, len(self.label_sets["app"])), np.float32))
        return np.concatenate(outs_s), np.concatenate(outs_a)

    def predict_proba(self, records: Sequence[FlowRecord], contexts: Sequence[Context | None] | None,
                      head: str | None = None) -> np.ndarray:
        """Probabilities [n, len(labels)] of the head for `label_column` (or the named head)."""
        s, a = self.logits(records, contexts)
        x = s if (head or self.head) == "service" else a
        return torch.softmax(torch.from_numpy(x), 1).numpy()

    def checkpoint(self) -> dict[str, Any]:
        """A plain-data checkpoint (tensors, str, numbers): loads with torch.load(weights_only=True)."""
        members = len(getattr(self.model, "members", [self.model]))  # as ensemble_of and the package count
        return {"state_dict": self.model.state_dict(), "config": self.config.to_dict(), "members": members,
                "spec": self.spec.to_dict(), "label_sets": self.label_sets, "label_column": self.label_column,
                "info": self.info}

    @classmethod
    def from_checkpoint(cls, ck: dict[str, Any]) -> "Student":
        conf = dict(ck["config"])
        if conf.pop("hello_tokens", 0):  # older checkpoints record the retired input, off
            raise ValueError("the checkpoint's student reads hello_tokens, an experiment this build no longer runs")
        cfg = EncoderConfig(**conf)
        ls = ck["label_sets"]
        n = int(ck.get("members", 1))
        m = StudentClassifier(cfg, len(ls["service"]), len(ls["app"])) if n == 1 else \
            StudentEnsemble([StudentClassifier(cfg, len(ls["service"]), len(ls["app"])) for _ in range(n)])
        m.load_state_dict(ck["state_dict"])
        m.eval()
        return cls(m, FeatureSpec.from_dict(ck["spec"]), ls, ck.get("label_column", "category"), cfg, info=ck.get("info", {}))

    def save(self, path: str | Path) -> None:
        torch.save(self.checkpoint(), str(path))

    @classmethod
    def load(cls, path: str | Path) -> "Student":
        return cls.from_checkpoint(torch.load(str(path), map_location="cpu", weights_only=True))


def ensemble_of(students: Sequence[Student]) -> Student:
    """One Student answering the mean log-softmax of `students` (trained on the same flows: same label sets)."""
    first = students[0]
    if any(s.label_sets != first.label_sets for s in students):
        raise ValueError("ensemble members must share their label sets")
    models = [m for s in students for m in getattr(s.model, "members", [s.model])]
    return Student(StudentEnsemble(models).eval(), first.spec, first.label_sets, first.label_column, first.config,
                   info={**first.info, "members": len(models)})


@dataclass(frozen=True)
class Augment:
    """Training-time perturbations of what differs between networks rather than between services.

    time_shift K: every gap of a training flow is scaled by 2**k, k drawn per flow from -K..K (its gap
    buckets, log2 of the gap, move by k): a path's round trip sets most gaps. context_drop P: a flow's BURST
    context (its client's other connections, and its position among them) is dropped with probability P:
    which other connections a client opens depends on the network and its other software."""

    time_shift: int = 0
    context_drop: float = 0.0

    def __post_init__(self) -> None:
        if self.time_shift < 0 or not 0.0 <= self.context_drop <= 1.0:
            raise ValueError(f"augment: time_shift must be >= 0 and context_drop in [0, 1], not {self}")

    def __bool__(self) -> bool:
        return bool(self.time_shift or self.context_drop)

    def apply(self, x: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
        """A perturbed copy of one batch of encode()'s tensors."""
        x = dict(x)
        if self.time_shift and "pkt" in x:
            pkt = x["pkt"].clone()
            k = torch.randint(-self.time_shift, self.time_shift + 1, (pkt.shape[0], 1), generator=gen)
            gap = pkt[:, :, 2]
            pkt[:, :, 2] = torch.where(gap > 0, (gap + k).clamp(1, IAT_BUCKETS - 1), gap)
            x["pkt"] = pkt
        if self.context_drop and "ctx" in x:
            keep = (torch.rand(x["ctx"].shape[0], generator=gen) >= self.context_drop).float()
            x["ctx"] = x["ctx"] * keep[:, None, None]
            meta = x["meta"].clone()
            meta[:, 3] *= keep  # the flow's position in its BURST
            x["meta"] = meta
        return x


def class_weights(y: np.ndarray, n: int, power: float = 0.5) -> torch.Tensor:
    counts = np.bincount(y[y >= 0], minlength=n).astype(np.float64)
    w = np.where(counts > 0, np.maximum(counts, 1) ** -power, 0.0)
    w = w / (w[counts > 0] * counts[counts > 0]).sum() * counts.sum()  # mean weight per sample = 1
    return torch.tensor(w, dtype=torch.float32)


def capture_draw(pcaps: Sequence[str], power: float) -> np.ndarray:
    """Per flow, the probability of being drawn: proportional to (flows of its capture) ** -power, so at
    power 1 every capture is drawn equally often, at 0 every flow."""
    _, inv, size = np.unique(np.asarray(pcaps), return_inverse=True, return_counts=True)
    p = size[inv.reshape(-1)].astype(np.float64) ** -power
    return p / p.sum()


def _label_index(values: Sequence[str], labels: list[str]) -> np.ndarray:
    pos = {l: i for i, l in enumerate(labels)}
    return np.array([pos.get(v, IGNORE) for v in values], np.int64)


def teacher_targets(teacher: Any, records: Sequence[FlowRecord], contexts: Sequence[Context | None] | None,
                    labels: list[str]) -> np.ndarray:
    """Teacher logits re-ordered to `labels`; labels the teacher lacks get a very low logit."""
    t = np.asarray(teacher.predict_logits(records, contexts), np.float32)
    tl = list(teacher.labels)
    if t.shape != (len(records), len(tl)):
        raise ValueError(f"teacher returned {t.shape}, expected ({len(records)}, {len(tl)})")
    out = np.full((len(records), len(labels)), -30.0, np.float32)
    pos = {l: i for i, l in enumerate(tl)}
    for j, l in enumerate(labels):
        if l in pos:
            out[:, j] = t[:, pos[l]]
    return out


def train_student(train: Any, *, label_column: str = "category", teacher: Any = None, use_payload: bool = True,
                  use_ports: bool = False, ssl_init: bool = True, quick: bool = False, seed: int = 0,
                  log: Callable[[str], None] = print, epochs: int | None = None,
                  unlabelled: tuple[Sequence[FlowRecord], Sequence[Context]] | None = None,
                  encoder_state: dict | None = None, config: dict | None = None, alpha: float = 0.5,
                  temperature: float = 2.0, spec: FeatureSpec | None = None, capture_balance: float = 0.0,
                  ssl_epochs: int | None = None, augment: Augment | None = None) -> Student:
    """Train a student on a LabelledSet (records, contexts, labels, service, app).

    teacher: an object with `labels` and `predict_logits(records, contexts)`; distils into the
    `label_column` head. ssl_init: start from `encoder_state` if given, else self-supervised pretraining
    on `unlabelled` (records, contexts) or, without it, on the training flows themselves (labels unused),
    for `ssl_epochs` (default: ssl.pretrain's).
    capture_balance: each epoch draws its n flows (with replacement) with probability proportional to
    (flows of the same capture) ** -capture_balance; 0 = every flow once per epoch. It keeps a few large
    captures from defining a class (an experiment for the by-capture split, docs/model-card.md).
    augment: perturbations of the supervised stage's batches (Augment); None = none.
    """
    t0 = time.time()
    set_threads()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    spec = spec or FeatureSpec(use_ports=use_ports)
    if spec.use_ports != use_ports:
        spec = FeatureSpec(**{**spec.to_dict(), "use_ports": use_ports})
    cfg = EncoderConfig.from_spec(spec, use_payload=use_payload, **(config or {}))
    head = HEAD_OF.get(label_column, "service")
    # label sets: service = category; app = app (or the chosen fine-grained column)
    svc_vals = list(train.service) if label_column != "category" else list(train.labels)
    app_vals = list(train.labels) if head == "app" else list(train.app)
    label_sets = {"service": sorted({v for v in svc_vals if v}), "app": sorted({v for v in app_vals if v})}
    for h in ("service", "app"):
        if not label_sets[h]:
            label_sets[h] = ["unknown"]
    ys = _label_index(svc_vals, label_sets["service"])
    ya = _label_index(app_vals, label_sets["app"])
    n = len(train.records)
    if n == 0:
        raise ValueError("empty training set")
    feats = to_tensors(encode(train.records, train.contexts, spec))
    names = input_names(cfg)

    model = StudentClassifier(cfg, len(label_sets["service"]), len(label_sets["app"]))
    if ssl_init:
        if encoder_state is not None:
            model.encoder.load_state_dict(encoder_state)
        else:
            from .ssl import pretrain
            recs, ctxs = unlabelled if unlabelled is not None else (train.records, train.contexts)
            key = (hash(tuple(r.uid for r in recs)), len(recs), repr(cfg), seed, quick, ssl_epochs)
            if key in _SSL_CACHE:  # eval trains several students on one split: pretrain once
                state, rng_after = _SSL_CACHE[key]
                model.encoder.load_state_dict(state)
                # torch's random stream where pretraining left it: the supervised stage draws the same
                # numbers as after a real pretrain, so a method scores the same whichever ran before it
                torch.set_rng_state(rng_after)
                log("student: SSL encoder from this process's cache")
            else:
                pretrain(model.encoder, recs, ctxs, spec, epochs=ssl_epochs, quick=quick, seed=seed, log=log)
                _SSL_CACHE.clear()
                _SSL_CACHE[key] = ({k: v.clone() for k, v in model.encoder.state_dict().items()},
                                   torch.get_rng_state())
    tgt = None
    if teacher is not None:
        tl = label_sets[head]
        tgt = torch.from_numpy(teacher_targets(teacher, train.records, train.contexts, tl))
        agree = float((tgt.argmax(1).numpy() == (ys if head == "service" else ya)).mean())
        log(f"student: teacher logits for {n} flows, teacher/label agreement {agree:.3f}")

    ws = class_weights(ys, len(label_sets["service"]))
    wa = class_weights(ya, len(label_sets["app"]))
    ys_t, ya_t = torch.from_numpy(ys), torch.from_numpy(ya)
    ep = epochs or (4 if quick else 30)
    bs = 128
    steps = ep * math.ceil(n / bs)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.02)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    hist = []
    draw = capture_draw(list(train.pcap), capture_balance) if capture_balance else None
    gen = torch.Generator().manual_seed(seed)
    for e in range(ep):
        model.train()
        perm = torch.from_numpy(rng.permutation(n) if draw is None else rng.choice(n, n, p=draw))
        tot = 0.0
        for i in range(0, n, bs):
            b = perm[i:i + bs]
            xb = {k: feats[k][b] for k in names}
            if augment:
                xb = augment.apply(xb, gen)
            s, a = model(*[xb[k] for k in names])
            l_s = F.cross_entropy(s, ys_t[b], weight=ws, ignore_index=IGNORE, label_smoothing=0.05)
            l_a = F.cross_entropy(a, ya_t[b], weight=wa, ignore_index=IGNORE, label_smoothing=0.05)
            l_s = torch.nan_to_num(l_s)  # a batch without any labelled flow for a head
            l_a = torch.nan_to_num(l_a)
            if tgt is not None:
                out = s if head == "service" else a
                kd = F.kl_div(F.log_softmax(out / temperature, 1), F.softmax(tgt[b] / temperature, 1),
                              reduction="batchmean") * temperature ** 2
                if head == "service":
                    l_s = (1 - alpha) * l_s + alpha * kd
                else:
                    l_a = (1 - alpha) * l_a + alpha * kd
            loss = l_s + 0.5 * l_a if head == "service" else 0.5 * l_s + l_a
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(b)
        hist.append({"epoch": e, "loss": tot / n})
        if e == ep - 1 or e % max(1, ep // 5) == 0:
            log(f"student: epoch {e + 1}/{ep} loss {tot / n:.4f} ({time.time() - t0:.0f}s)")
    model.eval()
    info = {"flows": n, "epochs": ep, "seconds": round(time.time() - t0, 1), "teacher": teacher is not None,
            "ssl_init": ssl_init, "use_payload": use_payload, "use_ports": use_ports, "seed": seed,
            "capture_balance": capture_balance,
            **({"augment": asdict(augment)} if augment else {}),
            "alpha": alpha if teacher is not None else 0.0, "temperature": temperature}
    return Student(model, spec, label_sets, label_column, cfg, hist, info)
