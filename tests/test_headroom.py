"""lab/headroom.py: what capture folds leave learnable, checked on real nDPI captures where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support import NDPI

from etool_sensor.lab.headroom import dataset_headroom, headroom, headroom_lines

# WhatsApp chat in three captures: the two login captures open with the old `WA` handshake, whatsapp.pcap's 86
# connections with the newer `ED` one; zug.pcap is the only capture of Crypto_Currency.
PCAPS = ["whatsapp.pcap", "whatsapp_login_chat.pcap", "whatsapp_login_call.pcap", "zug.pcap"]


@pytest.fixture(scope="module")
def ds(shared):
    from etool_sensor.train.data import load_labelled

    d = load_labelled(NDPI / "pcap", NDPI / "labels.csv", encrypted_only=True, pcaps=PCAPS)
    d.labels = list(d.service)
    return d


def by_capture(ds) -> list[np.ndarray]:
    return [np.array([i for i, p in enumerate(ds.pcap) if p == c]) for c in sorted(set(ds.pcap))]


def test_a_new_wire_format_of_a_known_app_has_its_app_but_not_its_fingerprint_in_training(ds):
    h = dataset_headroom(ds, by_capture(ds))
    wa = [i for i, (p, a) in enumerate(zip(ds.pcap, ds.app)) if p == "whatsapp.pcap" and a == "WhatsApp"]
    assert len(wa) >= 80 and all(ds.labels[i] == "Chat" for i in wa)
    chat = h["classes"]["Chat"]
    # held out one capture at a time, whatsapp.pcap's chat flows find WhatsApp chat in the login captures,
    # but none of their `ED` openings
    assert chat["label_in_training"] == 1.0
    assert chat["app_with_label"] > 0.9
    assert chat["fingerprint_with_label"] < 0.1
    # the app oracle gets them (it knows the app); the exact lookup does not (it knows only the wire format)
    oracle_right = h["app_oracle"]["accuracy"]
    lookup_right = h["fingerprint_lookup"]["accuracy"]
    assert oracle_right > lookup_right + 0.5


def test_a_class_seen_in_one_capture_only_has_nothing_in_training(ds):
    h = dataset_headroom(ds, by_capture(ds))
    cc = h["classes"]["Crypto_Currency"]
    assert cc["support"] >= 5 and cc["captures"] == 1 and cc["largest_capture_share"] == 1.0
    assert cc["label_in_training"] == cc["app_with_label"] == cc["fingerprint_with_label"] == 0.0


def test_random_folds_leave_more_learnable_than_capture_folds(ds):
    from etool_sensor.lab.splits import iid_folds

    cap = dataset_headroom(ds, by_capture(ds))
    iid = dataset_headroom(ds, iid_folds(ds, 4, seed=0))
    # flows of one capture share their wire format: split at random, most test flows meet their twins
    assert iid["fingerprint_with_label"] > cap["fingerprint_with_label"] + 0.5
    assert iid["fingerprint_lookup"]["accuracy"] > cap["fingerprint_lookup"]["accuracy"] + 0.5


def test_coverage_and_answers_follow_their_definitions():
    # three flows per fold, hand-made: labels, apps, captures and fingerprints chosen so every rule shows
    y = ["A", "A", "B", "A", "B", "B"]
    apps = ["x", "x", "y", "x", "y", "z"]
    pcaps = ["p1", "p1", "p1", "p2", "p2", "p2"]
    keys = np.array([7, 0, 9, 7, 5, 9], np.uint64)
    h = headroom(y, apps, pcaps, keys, [np.array([0, 1, 2]), np.array([3, 4, 5])], min_support=1)
    a, b = h["classes"]["A"], h["classes"]["B"]
    # A: flow 3 (app x, key 7) meets flow 0; flows 0 and 1 meet flow 3 by app, only flow 0 by key (1 has none)
    assert a["app_with_label"] == 1.0 and a["fingerprint_with_label"] == pytest.approx(2 / 3, abs=1e-3)
    # B: flow 2 meets flow 4 by app y, flow 5 by key 9; flow 4 meets flow 2 by app; flow 5's app z is new
    assert b["app_with_label"] == pytest.approx(2 / 3, abs=1e-3)
    assert b["fingerprint_with_label"] == pytest.approx(2 / 3, abs=1e-3)
    assert a["label_in_training"] == b["label_in_training"] == 1.0
    assert a["captures"] == 2 and a["largest_capture_share"] == pytest.approx(2 / 3, abs=1e-3)
    assert h["app_oracle"]["accuracy"] == pytest.approx(5 / 6)  # flow 5's new app z gets its fold's majority, A
    assert h["fingerprint_lookup"]["accuracy"] == pytest.approx(4 / 6)
    assert any("fingerprint lookup" in line for line in headroom_lines(h))


def test_inputs_must_be_parallel():
    with pytest.raises(ValueError, match="parallel"):
        headroom(["A", "B"], ["x"], ["p", "q"], np.zeros(2, np.uint64), [np.array([0]), np.array([1])])
