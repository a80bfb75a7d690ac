"""The baselines every method is compared with: a random forest and k-NN on the first 20 signed packet sizes
(AppScanner/CUMUL-like), and the forest on the hybrid's own inputs (rf_shape: flights, TCP/UDP, TLS hello
bits), the feature-matched baseline. sklearn is imported when one is built (the `train` extra)."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from ..features import flights
from ..flows import FlowRecord
from ..tls import parse_hello

N_SIZES = 20
N_FLIGHTS = 12  # rf_shape


def signed_sizes(records: Sequence[FlowRecord], n: int = N_SIZES) -> np.ndarray:
    """First n packets' IP lengths, + from the originator, - from the responder, 0 padded."""
    x = np.zeros((len(records), n), np.float32)
    for i, r in enumerate(records):
        for j, p in enumerate(r.packets[:n]):
            x[i, j] = p.ip_len if p.is_orig else -p.ip_len
    return x


class SizeBaseline:
    """rf / knn on the first 20 signed packet sizes. rf_hello: the forest with the TLS handshake structure too
    (hello version, cipher suites and extension types present, as bits over the training flows' most common
    values; tls.parse_hello): how much of that signal survives the capture shift (needs flows read with
    the whole hello, eval --hello-bytes H). rf_shape: the forest on what does not move with the path:
    the first flights (features.flights: direction-run byte and packet totals), TCP or UDP, and the
    handshake bits of rf_hello, without the single packet sizes."""

    def __init__(self, kind: str, seed: int = 0, quick: bool = False) -> None:
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.neighbors import KNeighborsClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.kind = kind
        if kind in ("rf", "rf_hello", "rf_shape"):
            self.m = RandomForestClassifier(n_estimators=50 if quick else 300, random_state=seed, n_jobs=2)
        else:
            self.m = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=5, weights="distance"))

    def _x(self, records) -> np.ndarray:
        if self.kind == "rf_shape":
            x = np.zeros((len(records), 2 * N_FLIGHTS + 1), np.float32)
            for i, r in enumerate(records):
                x[i, -1] = r.proto == "tcp"
                for j, (size, count) in enumerate(flights(r, N_FLIGHTS)):
                    x[i, j], x[i, N_FLIGHTS + j] = size, count
        else:
            x = signed_sizes(records)
        if self.kind not in ("rf_hello", "rf_shape"):
            return x
        h = np.zeros((len(records), 4 + len(self.vocab)), np.float32)
        for i, r in enumerate(records):
            for c in r.payload[:3]:
                p = parse_hello(c.data)
                if p is None:
                    continue
                o = 0 if p[0] == 1 else 2
                h[i, o], h[i, o + 1] = 1.0, p[1]
                for key in ((p[0], "c", v) for v in p[2]):
                    j = self.vocab.get(key)
                    if j is not None:
                        h[i, 4 + j] = 1.0
                for key in ((p[0], "e", v) for v in p[3]):
                    j = self.vocab.get(key)
                    if j is not None:
                        h[i, 4 + j] = 1.0
        return np.hstack([x, h])

    def fit(self, records: Sequence[FlowRecord], labels: Sequence[str]) -> "SizeBaseline":
        if self.kind in ("rf_hello", "rf_shape"):
            cnt: Counter = Counter()
            for r in records:
                for c in r.payload[:3]:
                    p = parse_hello(c.data)
                    if p is not None:
                        cnt.update({(p[0], "c", v) for v in p[2]} | {(p[0], "e", v) for v in p[3]})
            # ties broken by the key, not by set order (str hashing is salted per process): reproducible
            top = sorted(cnt.items(), key=lambda kv: (-kv[1], kv[0]))[:100]
            self.vocab = {k: j for j, (k, _) in enumerate(top)}
        self.m.fit(self._x(records), labels)
        self.labels = [str(c) for c in self.m.classes_]
        return self

    def predict_proba(self, records: Sequence[FlowRecord], contexts: Sequence | None = None) -> np.ndarray:
        return self.m.predict_proba(self._x(records))
