"""Stage 1: self-supervised pretraining of the TrafficEncoder on unlabelled flows (every capture we have).

ETooL's stage-1 tasks, scaled down to what a 2-core CPU trains in a minute or two:

- masked packet modelling: ~20% of packets have their content replaced by a learned [MASK] vector; the
  model restores direction, size bucket and gap bucket (the packet token holding them predicts every
  packet it merges).
- masked datagram modelling: ~20% of datagram tokens (groups of `dgram_stride` 2-byte units) are hidden;
  the model restores both bytes of every unit of the group.
- BURST graph matching (cheap variant): a flow is paired either with another flow of the same client
  that started within `pair_window` seconds (a neighbour in the traffic relation graph) or with a random
  flow of another capture/client. A small head on the two pooled embeddings predicts
  {unrelated, anchor first, partner first}: relation and order of the pair (pairwise order prediction
  instead of restoring a full permutation, which needs the same signal at a fraction of the cost).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from etool_sensor.context import Context
from etool_sensor.features import IAT_BUCKETS, SIZE_BUCKETS, FeatureSpec, encode
from etool_sensor.flows import FlowRecord

from .model import TrafficEncoder, input_names


class SSLHeads(nn.Module):
    def __init__(self, enc: TrafficEncoder) -> None:
        super().__init__()
        c = enc.c
        d = c.d
        self.ps = c.pkt_stride
        self.pkt = nn.Linear(d, self.ps * (3 + SIZE_BUCKETS + IAT_BUCKETS))
        self.us = c.dgram_stride
        self.unit = nn.Linear(d, self.us * 2 * 257) if c.dgram_tokens else None
        self.pair = nn.Sequential(nn.Linear(4 * d, d), nn.GELU(), nn.Linear(d, 3))


def pair_partners(records: Sequence[FlowRecord], groups: Sequence[str] | None, window: float = 3.0
                  ) -> list[np.ndarray]:
    """For each flow, the indices of flows of the same client (same capture, orig_h) within `window` s."""
    by_client: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_client[(groups[i] if groups is not None else "", r.orig_h)].append(i)
    out: list[np.ndarray] = [np.zeros(0, np.int64)] * len(records)
    for idx in by_client.values():
        idx.sort(key=lambda i: records[i].ts)
        ts = np.array([records[i].ts for i in idx])
        arr = np.array(idx)
        lo = np.searchsorted(ts, ts - window, "left")
        hi = np.searchsorted(ts, ts + window, "right")
        for k, i in enumerate(idx):
            nb = np.concatenate([arr[lo[k]:k], arr[k + 1:hi[k]]])
            out[i] = nb
    return out


def _mask_positions(valid: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(valid.shape, generator=gen) < p) & valid


def pretrain(encoder: TrafficEncoder, records: Sequence[FlowRecord], contexts: Sequence[Context | None],
             spec: FeatureSpec, *, epochs: int | None = None, quick: bool = False, seed: int = 0,
             log: Callable[[str], None] = print, groups: Sequence[str] | None = None, mask_p: float = 0.2,
             max_flows: int | None = None, lr: float = 2e-3, tasks: Sequence[str] = ("pkt", "unit", "pair"),
             ) -> TrafficEncoder:
    """Pretrain `encoder` in place on unlabelled flows; returns it (in eval mode)."""
    from .threads import set_threads

    t0 = time.time()
    if not records:
        return encoder
    set_threads()
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    n_all = len(records)
    cap = max_flows or (600 if quick else None)
    if cap and n_all > cap:
        keep = np.sort(rng.choice(n_all, cap, replace=False))
        records = [records[i] for i in keep]
        contexts = [contexts[i] for i in keep] if contexts is not None else None
        groups = [groups[i] for i in keep] if groups is not None else None
    n = len(records)
    feats = {k: torch.from_numpy(v) for k, v in encode(records, contexts, spec).items()}
    names = input_names(encoder.c)
    partners = pair_partners(records, groups)
    has_partner = np.array([len(p) > 0 for p in partners])
    client = [((groups[i] if groups is not None else ""), r.orig_h) for i, r in enumerate(records)]
    ts = np.array([r.ts for r in records])
    heads = SSLHeads(encoder)
    params = list(encoder.parameters()) + list(heads.parameters())
    ep = epochs or (1 if quick else 6)
    bs = 128
    steps = ep * math.ceil(n / bs)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.02)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    c = encoder.c
    sl = encoder.slices()
    ps, us = c.pkt_stride, c.dgram_stride
    nv = 3 + SIZE_BUCKETS + IAT_BUCKETS
    log(f"ssl: {n} flows ({int(has_partner.sum())} with BURST neighbours), {ep} epochs, tasks {','.join(tasks)}")
    encoder.train()
    heads.train()
    for e in range(ep):
        perm = rng.permutation(n)
        tot = defaultdict(float)
        for i in range(0, n, bs):
            b = torch.from_numpy(perm[i:i + bs])
            x = {k: feats[k][b] for k in names}
            pkt = x["pkt"]
            pmask = _mask_positions(pkt[:, :, 0] > 0, mask_p, gen) if "pkt" in tasks else None
            umask = None
            if "unit" in tasks and c.dgram_tokens:
                byt = x["byt"]
                if byt.shape[1] % 2:
                    byt = F.pad(byt, (0, 1))
                hi = byt[:, 0::2]
                ng = c.dgram_tokens
                padu = ng * us - hi.shape[1]
                hv = F.pad(hi, (0, padu)).view(len(b), ng, us)
                gmask = _mask_positions(hv.amax(-1) > 0, mask_p, gen)  # [B, groups]
                umask = gmask.repeat_interleave(us, dim=1)[:, :hi.shape[1]]
            z, h, _ = encoder(*[x[k] for k in names], pkt_masked=pmask, unit_masked=umask)
            loss = torch.zeros(())
            if pmask is not None and pmask.any():
                padn = c.pkt_tokens * ps - c.packets
                tgt = F.pad(pkt, (0, 0, 0, padn))  # [B, T*ps, 4]
                mk = F.pad(pmask, (0, padn))
                out = heads.pkt(h[:, sl["pkt"]]).view(len(b), c.pkt_tokens * ps, nv)[mk]
                tg = tgt[mk]
                l_p = (F.cross_entropy(out[:, :3], tg[:, 0]) + F.cross_entropy(out[:, 3:3 + SIZE_BUCKETS], tg[:, 1])
                       + 0.5 * F.cross_entropy(out[:, 3 + SIZE_BUCKETS:], tg[:, 2]))
                loss = loss + l_p
                tot["pkt"] += float(l_p.detach()) * len(b)
            if umask is not None and heads.unit is not None and umask.any():
                byt = x["byt"]
                if byt.shape[1] % 2:
                    byt = F.pad(byt, (0, 1))
                units = torch.stack([byt[:, 0::2], byt[:, 1::2]], -1)  # [B, U, 2]
                units = F.pad(units, (0, 0, 0, padu)).view(len(b), ng, us * 2)
                out = heads.unit(h[:, sl["dgram"]])[gmask].view(-1, 257)
                tg = units[gmask].reshape(-1)
                l_u = F.cross_entropy(out, tg)
                loss = loss + l_u
                tot["unit"] += float(l_u.detach()) * len(b)
            if "pair" in tasks:
                bi = b.numpy()
                cand = bi[has_partner[bi]]
                if len(cand) >= 4:
                    anchors, partners_i, labels = [], [], []
                    for a in cand:
                        if rng.random() < 0.5:
                            p = int(rng.choice(partners[a]))
                            lab = 1 if ts[a] <= ts[p] else 2
                        else:
                            p = int(rng.integers(n))
                            if client[p] == client[a]:
                                continue
                            lab = 0
                        anchors.append(a)
                        partners_i.append(p)
                        labels.append(lab)
                    if len(anchors) >= 4:
                        pa = torch.from_numpy(np.array(partners_i))
                        zb, _, _ = encoder(*[feats[k][pa] for k in names])
                        pos = {int(v): j for j, v in enumerate(bi)}
                        za = z[torch.tensor([pos[int(a)] for a in anchors])]
                        logits = heads.pair(torch.cat([za, zb, (za - zb).abs(), za * zb], 1))
                        l_g = F.cross_entropy(logits, torch.tensor(labels))
                        loss = loss + l_g
                        tot["pair"] += float(l_g.detach()) * len(b)
                        tot["pair_acc"] += float((logits.argmax(1) == torch.tensor(labels)).float().mean()) * len(b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
        log(f"ssl: epoch {e + 1}/{ep} " + " ".join(f"{k} {v / n:.3f}" for k, v in tot.items())
            + f" ({time.time() - t0:.0f}s)")
    encoder.eval()
    return encoder
