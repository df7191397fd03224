"""A character-level transformer trained by autolr.torch with no learning rate to tune.

    .venv-torch/bin/python examples/torch/transformer.py [--steps 300] [--algorithm gi]

Corpus: the GNU GPL version 3 text that every Debian system has (package base-files,
/usr/share/common-licenses/GPL-3); where it is missing, the source of Python's own `os` module.
Model: token + position embeddings, 2 pre-norm blocks of LayerNorm, causal self-attention
(nn.MultiheadAttention) and a GELU MLP, then LayerNorm and a linear read-out.
Optimizer: GI over auto-adam (default; `--algorithm auto-adam` for AutoAdam alone), fed the
per-sample Σg² of every parameter by autolr.torch.SumGradSquared, including the attention
projections and the embeddings. Prints the loss every 50 steps, the rate GI chose, the held-out
loss before and after, and a greedy sample.
"""
import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bindings" / "python"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import autolr.torch as alt  # noqa: E402

nn = torch.nn
CORPUS = Path("/usr/share/common-licenses/GPL-3")


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class CharTransformer(nn.Module):
    def __init__(self, vocab, context, dim=64, heads=4, layers=2):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids):
        n, t = ids.shape
        # Positions as an (N, T) index tensor, one row per sample: SumGradSquared takes dim 0 of
        # an Embedding's input as the sample (a shared (T,) tensor would be read as T samples).
        x = self.tok(ids) + self.pos(torch.arange(t).expand(n, t))
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)  # causal: no looking ahead
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.ln(x))


def corpus():
    if CORPUS.is_file():
        return CORPUS.read_text(), str(CORPUS)
    return Path(os.__file__).read_text(), os.__file__


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--algorithm", default="gi", choices=["gi", "auto-adam"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    text, source = corpus()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([index[c] for c in text], dtype=torch.long)
    split = int(0.9 * len(data))
    train, held_out = data[:split], data[split:]
    print(f"corpus: {source} ({len(text)} characters, {len(chars)} distinct); algorithm: {args.algorithm}")

    def batch(source_data, generator=None):
        starts = torch.randint(0, len(source_data) - args.context - 1, (args.batch,), generator=generator)
        x = torch.stack([source_data[s:s + args.context] for s in starts])
        y = torch.stack([source_data[s + 1:s + args.context + 1] for s in starts])
        return x, y

    model = CharTransformer(len(chars), args.context)
    sgs = alt.SumGradSquared(model)  # mean loss over the batch: the "mean" convention
    opt = alt.GI(model.parameters(), base="auto-adam") if args.algorithm == "gi" else alt.AutoAdam(model.parameters())
    print(f"model: {sum(p.numel() for p in model.parameters())} parameters in {len(list(model.parameters()))} tensors")

    def held_out_loss():
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            losses = [F.cross_entropy(model(x).flatten(0, 1), y.flatten()) for x, y in (batch(held_out, g) for _ in range(8))]
        return float(torch.stack(losses).mean())

    before = held_out_loss()
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = batch(train)

        def closure(backward=True):
            opt.zero_grad()
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            if backward:
                loss.backward()
            return loss
        loss = opt.step(closure, sum_sq=sgs)
        if step % 50 == 0 or step == args.steps:
            print(f"step {step:4d}  train loss {loss.item():.3f}  lr {opt.lr[0]:.3g}  ({time.perf_counter() - start:.1f} s)")
    after = held_out_loss()
    print(f"held-out loss: {before:.3f} -> {after:.3f} (uniform guess: {torch.log(torch.tensor(float(len(chars)))):.3f})")

    ids = data[split:split + 16].unsqueeze(0)
    with torch.no_grad():
        for _ in range(120):
            ids = torch.cat([ids, model(ids[:, -args.context:])[:, -1].argmax(-1, keepdim=True)], dim=1)
    print("sample:", repr("".join(chars[i] for i in ids[0].tolist())))
    print(f"final held-out loss {after:.4f} initial {before:.4f}")


if __name__ == "__main__":
    main()
