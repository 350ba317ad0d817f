"""A small language model built from ``DynamicLinearAttention``, trained on multi-query associative recall (MQAR),
then generating with the cache (prefill + step-by-step decoding). docs/model.md describes it and its results.

The task: a context of ``pairs`` key-value token pairs ``k1 v1 k2 v2 ...`` (distinct keys), then ``queries``
of those keys, each followed by its value: ``kq1 vq1 kq2 vq2 ...``. Only the values after query keys are
predictable (and scored): the model must recall, from its slot cache, which value followed that key.

    python -m examples.recall_lm --threads 1       # CPU, default size: trains in about 4 minutes (2-core machine)
    python -m examples.recall_lm --device cuda     # the same on a GPU
    python -m examples.recall_lm --smoke           # a few seconds: runs everything at a tiny size

It prints the training loss, the teacher-forced accuracy of the values on held-out sequences, the accuracy of
the values it generates itself (prefill the context with ``use_cache=True``, then one ``step`` per token,
feeding its own answers back), and tokens/s of training, of the prefill and of decoding.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dla_fast.layers import DLACache, DynamicLinearAttention, RMSNorm


@dataclass
class Config:
    pairs: int = 8
    queries: int = 8
    num_keys: int = 32
    num_values: int = 32
    hidden_size: int = 64
    layers: int = 2
    heads: int = 2
    capacity: int = 8
    tau: float = 0.6
    backbone: str = "mamba2"
    batch_size: int = 32
    steps: int = 800
    lr: float = 5e-3
    eval_sequences: int = 512

    @property
    def vocab(self) -> int:
        return self.num_keys + self.num_values

    @property
    def seq_len(self) -> int:
        return 2 * (self.pairs + self.queries)


SMOKE = dict(pairs=4, queries=4, num_keys=16, num_values=16, hidden_size=32, capacity=4, batch_size=16, steps=5,
             eval_sequences=32)


def mqar_batch(cfg: Config, batch: int, generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens [B, T], targets [B, T])``: targets are the next token at query keys (their value), -100 elsewhere."""
    keys = torch.rand(batch, cfg.num_keys, generator=generator).argsort(-1)[:, : cfg.pairs]  # distinct keys
    values = cfg.num_keys + torch.randint(cfg.num_values, (batch, cfg.pairs), generator=generator)
    asked = torch.rand(batch, cfg.pairs, generator=generator).argsort(-1)
    asked = asked.repeat(1, math.ceil(cfg.queries / cfg.pairs))[:, : cfg.queries]  # which pairs are queried
    context = torch.stack([keys, values], -1).flatten(1)
    query = torch.stack([keys.gather(1, asked), values.gather(1, asked)], -1).flatten(1)
    tokens = torch.cat([context, query], 1)
    targets = torch.full_like(tokens, -100)
    start = 2 * cfg.pairs
    targets[:, start::2] = tokens[:, start + 1 :: 2]  # at each query key: its value
    return tokens.to(device), targets.to(device)


class MLP(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.up, self.down = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


def dla_mixer(cfg: Config, layer_idx: int) -> nn.Module:
    """The default token mixer: ``DynamicLinearAttention`` as ``cfg`` describes it."""
    return DynamicLinearAttention(cfg.hidden_size, cfg.heads, backbone=cfg.backbone, capacity=cfg.capacity,
                                  tau=cfg.tau, layer_idx=layer_idx)


#: ``mixer(cfg, layer_idx) -> module``: a token mixer with the layer's ``forward`` signature (studies/recall.py
#: swaps in other partitions through it).
Mixer = Callable[[Config, int], nn.Module]


class Block(nn.Module):
    """``x + mixer(norm(x))`` (DLA by default), then ``x + MLP(norm(x))``."""

    def __init__(self, cfg: Config, layer_idx: int, mixer: Mixer = dla_mixer):
        super().__init__()
        self.attn_norm, self.mlp_norm = RMSNorm(cfg.hidden_size), RMSNorm(cfg.hidden_size)
        self.attn = mixer(cfg, layer_idx)
        self.mlp = MLP(cfg.hidden_size)

    def forward(self, x, attention_mask=None, past_key_values=None, use_cache=False):
        o, _, past_key_values = self.attn(self.attn_norm(x), attention_mask=attention_mask,
                                          past_key_values=past_key_values, use_cache=use_cache)
        x = x + o
        return x + self.mlp(self.mlp_norm(x)), past_key_values


class RecallLM(nn.Module):
    """Embedding, ``layers`` blocks, a final norm and the LM head; ``mixer`` makes each block's token mixer."""

    def __init__(self, cfg: Config, mixer: Mixer = dla_mixer):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab, cfg.hidden_size)
        self.blocks = nn.ModuleList(Block(cfg, i, mixer) for i in range(cfg.layers))
        self.norm = RMSNorm(cfg.hidden_size)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab, bias=False)

    def forward(self, tokens, attention_mask=None, past_key_values=None, use_cache=False):
        x = self.embed(tokens)
        if use_cache and past_key_values is None:
            past_key_values = DLACache()
        for block in self.blocks:
            x, past_key_values = block(x, attention_mask, past_key_values, use_cache)
        return self.head(self.norm(x)), past_key_values


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def train(model: RecallLM, cfg: Config, device, seed: int, log_every: int, history: list | None = None) -> float:
    """AdamW with a cosine schedule on fresh MQAR batches; returns training tokens/s. Every ``log_every`` steps
    it prints the loss and the batch accuracy, and appends them to ``history`` (if given) as a dict."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.1, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    began, tokens = time.perf_counter(), 0
    for step in range(1, cfg.steps + 1):
        x, y = mqar_batch(cfg, cfg.batch_size, gen, device)
        logits, _ = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        tokens += x.numel()
        if step % log_every == 0 or step == cfg.steps:
            acc = (logits.argmax(-1) == y)[y >= 0].float().mean().item()
            if history is not None:
                history.append(dict(step=step, loss=loss.item(), accuracy=acc))
            print(f"step {step:5d}  loss {loss.item():.4f}  batch accuracy {acc:.3f}  "
                  f"({time.perf_counter() - began:.0f} s)", flush=True)
    sync(device)
    return tokens / (time.perf_counter() - began)


@torch.no_grad()
def teacher_forced_accuracy(model: RecallLM, x: torch.Tensor, y: torch.Tensor) -> float:
    logits, _ = model(x)
    return (logits.argmax(-1) == y)[y >= 0].float().mean().item()


@torch.no_grad()
def generate_answers(model: RecallLM, cfg: Config, x: torch.Tensor):
    """Prefill the context (``use_cache=True``), then decode the queries one token at a time: feed each query
    key, take the argmax as the value, feed that value back. Returns ``(answers [B, queries], prefill s,
    decode s, the mean number of slots in use per layer after the context)``."""
    start = 2 * cfg.pairs
    sync(x.device)
    began = time.perf_counter()
    logits, cache = model(x[:, :start], use_cache=True)
    sync(x.device)
    prefilled = time.perf_counter()
    slots = [state["recurrent_state"].size.float().mean().item() for state in cache]
    answers = []
    for i in range(cfg.queries):
        logits, cache = model(x[:, start + 2 * i : start + 2 * i + 1], past_key_values=cache)  # the query key
        answer = logits[:, -1].argmax(-1, keepdim=True)
        answers.append(answer)
        _, cache = model(answer, past_key_values=cache)  # its own answer, as a model generating would
    sync(x.device)
    return torch.cat(answers, 1), prefilled - began, time.perf_counter() - prefilled, slots


def evaluate(model: RecallLM, cfg: Config, device, seed: int) -> dict:
    model.eval()
    x, y = mqar_batch(cfg, cfg.eval_sequences, torch.Generator().manual_seed(seed + 1), device)
    forced = teacher_forced_accuracy(model, x, y)
    generate_answers(model, cfg, x[:2])  # warm-up (numba / Triton compilation, caches)
    answers, prefill_s, decode_s, slots = generate_answers(model, cfg, x)
    truth = x[:, 2 * cfg.pairs + 1 :: 2]
    B = x.shape[0]
    return dict(forced=forced, generated=(answers == truth).float().mean().item(), slots=slots,
                prefill_tps=B * 2 * cfg.pairs / prefill_s, decode_tps=B * 2 * cfg.queries / decode_s)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a small DLA language model on multi-query associative "
                                     "recall, then generate with the cache.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--steps", type=int, default=None, help=f"training steps (default {Config.steps})")
    parser.add_argument("--backbone", choices=["mamba2", "gated_deltanet"], default="mamba2")
    parser.add_argument("--smoke", action="store_true", help="a tiny run that only checks everything runs")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"sequences per step (default {Config.batch_size})")
    parser.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {Config.lr})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = Config(backbone=args.backbone, **(SMOKE if args.smoke else {}))
    for name in ("steps", "batch_size", "lr"):
        value = getattr(args, name)
        if value is not None:
            if value <= 0:
                parser.error(f"--{name.replace('_', '-')} must be positive")
            setattr(cfg, name, value)
    torch.manual_seed(args.seed)
    model = RecallLM(cfg).to(args.device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"MQAR: {cfg.pairs} pairs, {cfg.queries} queries, T = {cfg.seq_len}, vocab {cfg.vocab}; model: "
          f"{cfg.layers} x DLA ({cfg.backbone}, {cfg.heads} heads, K = {cfg.capacity}, tau = {cfg.tau}), "
          f"d = {cfg.hidden_size}, {n_params / 1e3:.1f}k parameters; device {args.device}", flush=True)
    began = time.perf_counter()
    train_tps = train(model, cfg, args.device, args.seed, log_every=max(1, cfg.steps // 10))
    train_s = time.perf_counter() - began
    result = evaluate(model, cfg, args.device, args.seed)
    print(f"training: {cfg.steps} steps in {train_s:.1f} s, {train_tps:,.0f} tokens/s")
    print(f"accuracy (teacher forced, {cfg.eval_sequences} held-out sequences): {result['forced']:.3f}")
    print(f"accuracy (generated: prefill + decode with the cache): {result['generated']:.3f}")
    slots = ", ".join(f"{n:.1f}" for n in result["slots"])
    print(f"slots in use after the {2 * cfg.pairs}-token context, mean per layer: {slots} (of K = {cfg.capacity})")
    print(f"prefill: {result['prefill_tps']:,.0f} tokens/s; decode: {result['decode_tps']:,.0f} tokens/s "
          f"(batch {cfg.eval_sequences})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
