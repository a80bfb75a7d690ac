"""The LLM teacher: trains (quick) on a small real subset, the LLM stays frozen, the projector learns."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # loads the LLM (SmolLM2-135M) and trains on the CPU

from tests.support import NDPI  # noqa: E402

PCAPS = ["whatsapp.pcap", "discord.pcap", "avast_securedns.pcapng", "alicloud.pcap", "softether.pcap"]


@pytest.fixture(scope="module")
def data(shared):
    from etool_sensor.train.data import load_labelled

    ds = load_labelled(NDPI / "pcap", NDPI / "labels.csv", encrypted_only=True, pcaps=PCAPS)
    if len(ds) < 20:
        pytest.skip("too few matched flows")
    return ds


@pytest.fixture(scope="module")
def trained(data):
    from etool_sensor.train import teacher as T

    try:
        lm, _ = T.load_llm(2, log=lambda s: None)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    logs: list[str] = []
    t = T.train_teacher(data, quick=True, log=logs.append)
    return t, before, logs


def test_logits_shape_and_labels(trained, data):
    t, _, _ = trained
    assert t.labels == sorted(set(data.labels))
    z = t.predict_logits(data.records[:7], data.contexts[:7])
    assert z.shape == (7, len(t.labels)) and np.isfinite(z).all()
    p = t.predict_proba(data.records[:7], data.contexts[:7])
    assert np.allclose(p.sum(1), 1, atol=1e-5)
    assert t.predict_logits([], []).shape == (0, len(t.labels))


def test_teacher_uses_the_kv_cache_api_of_the_installed_transformers(trained, data):
    """The prompt prefix is computed once and passed as a KV cache under the argument name this transformers
    takes (`cache` since 5.x, which deprecates `past_key_values`): no FutureWarning, and no fallback to
    recomputing the prefix for every batch."""
    import warnings

    t, _, _ = trained
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        z = t.predict_logits(data.records[:5], data.contexts[:5])
    assert z.shape == (5, len(t.labels)) and not t.net.no_cache


def test_llm_frozen_weights_unchanged(trained):
    t, before, _ = trained
    lm = t.net.lm
    assert not lm.training
    assert all(not p.requires_grad for p in lm.parameters())
    after = lm.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    # the LLM is not part of what the teacher trains or saves
    assert not any(k.startswith("lm.") or "embed_tokens" in k for k in t.net.state_dict())


def test_projector_gets_gradients(trained, data):
    from etool_sensor.train.teacher import _arrays

    t, _, _ = trained
    net = t.net
    net.zero_grad()
    x = _arrays(data.records[:4], data.contexts[:4], t.spec)
    net(x, t.label_column).logsumexp(1).sum().backward()
    g = [p.grad for p in net.projector.parameters()]
    assert all(x is not None and x.abs().sum() > 0 for x in g)
    assert all(p.grad is None for p in net.lm.parameters())


def test_training_recorded(trained):
    t, _, logs = trained
    h = t.history
    assert h["epoch_s"] and all(s > 0 for s in h["epoch_s"])
    assert set(h["ssl_acc"]) == {"dir", "size", "dgram", "match"}
    assert any("stage 1" in s for s in logs)


def test_encoder_only_variant(data):
    from etool_sensor.train.teacher import train_teacher

    t = train_teacher(data, quick=True, use_llm=False, log=lambda s: None)
    assert t.net.lm is None
    assert t.predict_logits(data.records[:3], data.contexts[:3]).shape == (3, len(t.labels))


def test_ssl_masks_one_packet():
    from etool_sensor.train.teacher import ssl_batch

    g = torch.Generator().manual_seed(0)
    pkt = torch.zeros(3, 32, 4, dtype=torch.long)
    pkt[:, :5, 0] = torch.tensor([1, 2, 1, 2, 2])
    pkt[:, :5, 1] = torch.tensor([0, 3, 40, 95, 1])
    x = {"pkt": pkt, "byt": torch.zeros(3, 192, dtype=torch.long), "seg": torch.zeros(3, 192, dtype=torch.long),
         "ctx": torch.zeros(3, 8, 11), "meta": torch.zeros(3, 4)}
    _, kw, y, ok = ssl_batch("dir", x, g)
    m = kw["pkt_masked"]
    assert (m.sum(1) == 1).all() and ok.all()
    j = m.float().argmax(1)
    assert torch.equal(y, pkt[torch.arange(3), j, 0] - 1)
    _, kw, y, ok = ssl_batch("size", x, g)
    assert set(y.tolist()) <= {0, 1, 2, 3}


def test_zero_shot_names_held_out_labels_from_their_words(shared, tmp_path, capsys):
    """lab/zero_shot.py: the teacher trains without the held-out services' flows, then names each of those flows
    from the held-out names alone; the report is referenced to chance (1/k) with a capture-group interval."""
    from etool_sensor.lab import zero_shot as Z
    from etool_sensor.train import teacher as T

    try:
        T.load_llm(2, log=lambda s: None)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    pcaps = "tls_verylong_certificate.pcap,chrome.pcap,quic.pcap,signal.pcap,teams.pcap,reddit.pcap,whatsapp.pcap"
    out = tmp_path / "z.json"
    assert Z.main(["--data", str(NDPI / "pcap"), "--labels", str(NDPI / "labels.csv"), "--pcaps", pcaps, "--quick",
                   "--held-out", "Chat,SocialNetwork", "--json", str(out)]) == 0
    import json

    run = json.loads(out.read_text())["runs"][0]
    z = run["zero_shot"]
    assert run["held_out"] == ["Chat", "SocialNetwork"] and run["test_flows"] > 0 and z["chance"] == 0.5
    assert sum(z["predicted_shares"].values()) == pytest.approx(1, abs=1e-3)  # only held-out names answer
    assert z["balanced_accuracy"] == pytest.approx(sum(z["recall"].values()) / 2, abs=1e-3)
    lo, hi = z["balanced_accuracy_ci95"]
    assert 0 <= lo <= hi <= 1 and z["verdict"] in ("above chance", "chance", "below chance")
    assert 0 <= run["generalised"]["named_unseen_share"] <= 1
    # fewer than two held-out labels with flows: one line, exit 2
    assert Z.main(["--data", str(NDPI / "pcap"), "--labels", str(NDPI / "labels.csv"), "--pcaps", pcaps, "--quick",
                   "--held-out", "Chat,NoSuchService", "--json", str(out)]) == 2
    assert "needs at least 2 held-out labels with flows" in capsys.readouterr().err
