"""Splits of a labelled flow set for `eval`: one partition per named split (IID, by capture group, unseen
apps, shifted priors) and K folds (by capture group, or random stratified). Capture groups keep captures
that share a server endpoint or a client recorded the same day together, because nDPI's files were cut from
shared recordings and file names leak sessions (capture_groups)."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # for annotations only
    from ..train.data import LabelledSet

SPLITS = ("iid", "capture", "unseen_app", "shifted")
EXTRA_SPLITS = ("capture_kfold", "iid_kfold")  # run only when named: K trainings per method


def label_of(ds: LabelledSet, column: str) -> list[str]:
    """Per flow, its label in `column` (category: the service; app; else the set's current labels)."""
    return list(ds.service) if column == "category" else list(ds.app) if column == "app" else list(ds.labels)


def relabel(ds: LabelledSet, column: str) -> LabelledSet:
    """A copy of `ds` labelled by `column` (label_of)."""
    sub = ds.subset(range(len(ds)))
    sub.labels = label_of(ds, column)
    sub.label_column = column
    return sub


def make_splits(ds: LabelledSet, names: Sequence[str], seed: int = 0, test_size: float = 0.3) -> dict[str, dict]:
    """{split: {"train": idx, "test": idx, "label": column or None}} (label None: the run's label column)."""
    rng = np.random.default_rng(seed)
    n = len(ds)
    ys = list(ds.labels)
    out: dict[str, dict] = {}
    for name in names:
        r = np.random.default_rng([seed, SPLITS.index(name) if name in SPLITS else 99])
        if name == "iid":
            from sklearn.model_selection import train_test_split

            idx = np.arange(n)
            counts = {c: ys.count(c) for c in set(ys)}
            strat_ok = np.array([counts[y] >= 2 for y in ys])
            tr, te = train_test_split(idx[strat_ok], test_size=test_size, random_state=seed,
                                      stratify=[ys[i] for i in idx[strat_ok]])
            tr = np.concatenate([tr, idx[~strat_ok]])  # singletons can only be learnt, never tested
            out[name] = {"train": np.sort(tr), "test": np.sort(te), "label": None}
        elif name == "capture":
            group = capture_groups(ds)
            pcaps = sorted(set(group))
            r.shuffle(pcaps)
            size = {p: 0 for p in pcaps}
            for p in group:
                size[p] += 1
            test, got = set(), 0
            for p in pcaps:
                if got >= test_size * n:
                    break
                if got + size[p] > 1.5 * test_size * n and got > 0:
                    continue  # a huge group would swamp the test set
                test.add(p)
                got += size[p]
            te = np.array([i for i in range(n) if group[i] in test], int)
            tr = np.array([i for i in range(n) if group[i] not in test], int)
            out[name] = {"train": tr, "test": te, "label": None}
        elif name == "unseen_app":
            apps_of: dict[str, list[str]] = {}
            for s, a in zip(ds.service, ds.app):
                apps_of.setdefault(s, [])
                if a not in apps_of[s]:
                    apps_of[s].append(a)
            services_of: dict[str, set[str]] = {}
            for sv, a in zip(ds.service, ds.app):
                services_of.setdefault(a, set()).add(sv)
            held: set[str] = set()  # an app is held out entirely, under every service it appears in

            def still_seen(a: str) -> bool:
                return all(any(b not in held and b != a for b in apps_of[sv]) for sv in services_of[a])

            for sv in sorted(apps_of):
                apps = sorted(a for a in apps_of[sv] if a not in held)
                if len(apps_of[sv]) < 2 or len(apps) < 2:
                    continue
                want = max(1, len(apps_of[sv]) // 3)
                for a in r.permutation(apps):
                    if want and still_seen(str(a)):
                        held.add(str(a))
                        want -= 1
            te = np.array([i for i in range(n) if ds.app[i] in held], int)
            tr = np.array([i for i in range(n) if ds.app[i] not in held], int)
            out[name] = {"train": tr, "test": te, "label": "category",
                         "held_out_apps": sorted(held)}
        elif name == "shifted":
            classes = sorted(set(ys), key=lambda c: (ys.count(c), c))  # rarest first
            frac = {c: 0.6 - 0.5 * k / max(len(classes) - 1, 1) for k, c in enumerate(classes)}
            te_l, tr_l = [], []
            for c in classes:
                members = [i for i in range(n) if ys[i] == c]
                r.shuffle(members)
                k = int(round(frac[c] * len(members))) if len(members) >= 2 else 0
                k = min(k, len(members) - 1)
                te_l += members[:k]
                tr_l += members[k:]
            out[name] = {"train": np.sort(np.array(tr_l, int)), "test": np.sort(np.array(te_l, int)), "label": None}
        else:
            raise ValueError(f"unknown split {name!r}; choose from {', '.join(SPLITS)}")
    del rng
    return out


CLIENT_WINDOW = 86400.0  # captures sharing a client address are one group when recorded this close (s)
_CLOCK_SET = 946684800.0  # 2000-01-01: a capture starting before it has no usable clock
_CLOCK_SPAN = 30 * 86400.0  # nor has one whose flows spread over more than this (clocks mixed in one file)


def _identifies(addr: str) -> bool:
    """Whether an address names one host: not loopback, unspecified, multicast, link-local or broadcast
    (those are the same string on every network)."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_link_local
                or addr == "255.255.255.255")


def capture_groups(ds: LabelledSet, client_window: float = CLIENT_WINDOW) -> list[str]:
    """Per flow, its capture group: the connected component of captures linked by a shared server endpoint
    (address, port, protocol) or by a shared client address recorded within `client_window` seconds (both
    captures' clocks usable: starting after 2000, within 30 days; two captures without a usable clock that
    share a client are linked too). Named by its first capture; a capture without endpoint data is its own.

    Why: file names do not separate sessions. nDPI's captures were cut from shared recordings (reddit and
    tumblr share 11 identical 5-tuples, one client spans pinterest, reddit and tumblr; the openvpn variants and
    dnscrypt v1/v2 share clients and servers), so folds by file leak sessions and servers into training. A
    client address alone is not linked across years: a home network's 192.168.x.y recurs in captures years
    apart, and linking on it makes one component of 62 % of the encrypted flows."""
    pcaps = list(ds.pcap)
    parent = {p: p for p in pcaps}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def join(a: str, b: str) -> None:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    span: dict[str, tuple[float, float]] = {}
    servers: dict[tuple, str] = {}
    clients: dict[str, set[str]] = {}
    for r, p in zip(ds.records, pcaps):
        if r is None:
            continue
        lo, hi = span.get(p, (r.ts, r.ts))
        span[p] = (min(lo, r.ts), max(hi, r.ts))
        if _identifies(r.resp_h):
            join(p, servers.setdefault((r.resp_h, r.resp_p, r.proto), p))
        if _identifies(r.orig_h):
            clients.setdefault(r.orig_h, set()).add(p)

    def clock(p: str) -> bool:
        lo, hi = span[p]
        return lo >= _CLOCK_SET and hi - lo <= _CLOCK_SPAN

    for caps in clients.values():
        caps_s = sorted(caps)
        for i, a in enumerate(caps_s):
            for b in caps_s[i + 1:]:
                if clock(a) and clock(b):
                    gap = max(span[a][0], span[b][0]) - min(span[a][1], span[b][1])
                    if gap <= client_window:
                        join(a, b)
                elif not clock(a) and not clock(b):
                    join(a, b)
    return [root(p) for p in pcaps]


def capture_folds(ds: LabelledSet, folds: int, seed: int = 0) -> list[np.ndarray]:
    """Test indices of `folds` group folds on capture groups (capture_groups: captures that share a server
    or a client stay together), balanced by flow count (greedy, biggest group first, ties broken by a
    seeded shuffle)."""
    if folds < 2:
        raise ValueError("capture_kfold needs --folds >= 2")
    group = capture_groups(ds)
    names = sorted(set(group))
    if len(names) < folds:
        raise ValueError(f"{len(names)} capture groups cannot make {folds} capture folds")
    rng = np.random.default_rng([seed, 7])
    rng.shuffle(names)
    size = {g: 0 for g in names}
    for g in group:
        size[g] += 1
    load = [0] * folds
    fold_of: dict[str, int] = {}
    for g in sorted(names, key=lambda g: -size[g]):  # stable: equal sizes keep the shuffled order
        k = min(range(folds), key=lambda j: (load[j], j))
        fold_of[g] = k
        load[k] += size[g]
    return [np.array([i for i in range(len(ds)) if fold_of[group[i]] == k], int) for k in range(folds)]


def iid_folds(ds: LabelledSet, folds: int, seed: int = 0) -> list[np.ndarray]:
    """Test indices of `folds` random folds stratified by label (the IID twin of capture_folds)."""
    import warnings

    from sklearn.model_selection import StratifiedKFold

    if folds < 2:
        raise ValueError("iid_kfold needs --folds >= 2")
    y = np.asarray(ds.labels)
    with warnings.catch_warnings():  # classes with fewer flows than folds: some folds lack them, as in any split
        warnings.simplefilter("ignore", UserWarning)
        skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        return [te for _, te in skf.split(np.zeros(len(y)), y)]


KFOLDS = {"capture_kfold": capture_folds, "iid_kfold": iid_folds}
