"""autolr.torch.SumGradSquared for every parameter of common models, against brute-force
per-sample gradients (one backward pass per sample), in both scale conventions, over two
micro-batches (S and N accumulate) and under clip_grad_norm_ (which must not change S)."""
import numpy as np
import pytest

from conftest import import_torch

torch = import_torch()

import autolr  # noqa: E402
import autolr.torch as alt  # noqa: E402

nn = torch.nn
F = torch.nn.functional


class Seq(nn.Module):
    """Token ids (N, T) -> embedding, LayerNorm, causal self-attention, Linear over positions."""

    def __init__(self, batch_first=True, kdim=None, bias_kv=False, vocab=11, dim=8):
        super().__init__()
        self.batch_first = batch_first
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.norm = nn.LayerNorm(dim)
        self.kv = nn.Linear(dim, kdim) if kdim else None
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=batch_first, kdim=kdim, vdim=kdim, add_bias_kv=bias_kv)
        self.head = nn.Linear(dim, 3)

    def forward(self, ids):
        h = self.norm(self.emb(ids))
        t = ids.shape[1]
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
        kv = self.kv(h) if self.kv is not None else h
        padding = ids == 0
        if not self.batch_first:
            h, kv = h.transpose(0, 1), kv.transpose(0, 1)
        out, _ = self.attn(h, kv, kv, attn_mask=mask, key_padding_mask=padding & False)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return self.head(out + h if self.batch_first else out + h.transpose(0, 1))


class Scale(nn.Module):
    """A module with parameters of its own that no closed form knows: the torch.func fallback."""

    def __init__(self, dim):
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, dim))
        self.shift = nn.Parameter(torch.zeros(dim) + 0.1)

    def forward(self, x):
        return torch.tanh(x * self.gain + self.shift) * self.gain


def conv_model(conv, x_shape):
    model = nn.Sequential(*conv, nn.Tanh(), nn.Flatten())
    with torch.no_grad():
        width = model(torch.zeros(1, *x_shape)).shape[1]
    return nn.Sequential(model, nn.Linear(width, 3))


def make(kind):
    """(model, inputs (N, ...), targets (N, ...)) for each form."""
    torch.manual_seed(7)
    n = 6
    g = torch.Generator().manual_seed(8)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(5, 7), nn.ReLU(inplace=True), nn.Linear(7, 3)), torch.randn(n, 5, generator=g), None
    if kind == "linear-seq":
        return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)), torch.randn(n, 4, 5, generator=g), None
    if kind == "conv1d":
        return conv_model([nn.Conv1d(2, 4, 3, padding=1, stride=2), nn.Tanh(), nn.Conv1d(4, 4, 2, dilation=2, groups=2, padding_mode="circular", padding=1)], (2, 9)), torch.randn(n, 2, 9, generator=g), None
    if kind == "conv2d":
        return conv_model([nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding="same", padding_mode="reflect", dilation=2, groups=2)], (2, 7, 7)), torch.randn(n, 2, 7, 7, generator=g), None
    if kind == "conv3d":
        return conv_model([nn.Conv3d(2, 3, (2, 3, 2), stride=(1, 2, 1), padding=(1, 0, 1), bias=True)], (2, 4, 5, 4)), torch.randn(n, 2, 4, 5, 4, generator=g), None
    if kind == "conv-one-channel":  # one input channel: the strided-windows form, 1d, 2d and 3d side by side
        class OneChannel(nn.Module):
            def __init__(self):
                super().__init__()
                self.c1 = nn.Conv1d(1, 3, 3, stride=2, padding=1, dilation=2)
                self.c2 = nn.Conv2d(1, 4, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
                self.c2r = nn.Conv2d(1, 2, 3, padding="same", padding_mode="reflect", bias=False)
                self.c3 = nn.Conv3d(1, 2, 2, padding=(0, 1, 0))
                self.out = nn.LazyLinear(3)

            def forward(self, x):
                parts = [self.c1(x.reshape(x.shape[0], 1, -1)), self.c2(x), self.c2r(x), self.c3(x.reshape(x.shape[0], 1, 2, 3, 6))]
                return self.out(torch.cat([torch.tanh(p).flatten(1) for p in parts], 1))
        model = OneChannel()
        x = torch.randn(n, 1, 6, 6, generator=g)
        model(x[:1])  # the lazy layer takes its shape
        return model, x, None
    if kind == "groupnorm":
        return conv_model([nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4)], (2, 6, 6)), torch.randn(n, 2, 6, 6, generator=g), None
    if kind == "batchnorm-eval":
        model = conv_model([nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4)], (2, 6, 6))
        bn = model[0][1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.eval()
        return model, torch.randn(n, 2, 6, 6, generator=g), None
    if kind == "layernorm-2d":
        return nn.Sequential(nn.Linear(5, 6), nn.LayerNorm([6]), nn.Linear(6, 3)), torch.randn(n, 5, generator=g), None
    ids = torch.randint(0, 11, (n, 5), generator=g)
    ids[0, 1] = ids[0, 3] = 4  # a row used twice in one sample
    ids[1, -1] = 0  # padding_idx
    if kind == "transformer":
        return Seq(), ids, None
    if kind == "attention-seq-first-kdim":
        return Seq(batch_first=False, kdim=6, bias_kv=True), ids, None
    if kind == "fallback":
        return nn.Sequential(nn.Linear(5, 4), Scale(4), nn.Linear(4, 3), nn.PReLU()), torch.randn(n, 5, generator=g), None
    raise AssertionError(kind)


KINDS = ["mlp", "linear-seq", "conv1d", "conv2d", "conv3d", "conv-one-channel", "groupnorm", "batchnorm-eval", "layernorm-2d",
         "transformer", "attention-seq-first-kdim", "fallback"]


def per_sample_losses(out):
    """Each sample's own loss: any smooth function of its outputs (dim 0 is the sample)."""
    target = torch.linspace(-1, 1, out[0].numel()).reshape(out.shape[1:])
    return ((out - target) ** 2).reshape(out.shape[0], -1).sum(1)


def brute_force(model, x, scale):
    """Σ_i g_i² ("sample") or Σ_i (g_i/N)² ("mean") by one backward pass per sample."""
    n = x.shape[0]
    params = [p for p in model.parameters() if p.requires_grad]
    sums = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    for i in range(n):
        model.zero_grad()
        per_sample_losses(model(x[i:i + 1])).sum().backward()
        for s, p in zip(sums, params):
            g = p.grad.double() if p.grad is not None else torch.zeros_like(s)
            s += (g / (n if scale == "mean" else 1)) ** 2
    return params, sums


def assert_close(got, expected, what):
    for i, (g, e) in enumerate(zip(got, expected)):
        e = e.numpy()
        np.testing.assert_allclose(g, e, rtol=2e-4, atol=1e-6 * max(1e-12, float(np.abs(e).max())), err_msg=f"{what}: tensor {i}")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind", KINDS)
def test_sum_sq_matches_brute_force(kind, reduction):
    model, x, _ = make(kind)
    scale = "mean" if reduction == "mean" else "sample"
    params, expected = brute_force(model, x, scale)
    sgs = alt.SumGradSquared(model, reduction=reduction)

    # one batch
    model.zero_grad()
    losses = per_sample_losses(model(x))
    (losses.mean() if reduction == "mean" else losses.sum()).backward()
    assert sgs.per_sample_scale == scale and sgs.batch_size == x.shape[0]
    assert_close(sgs.sum_sq(params), expected, f"{kind} {reduction}")
    n2 = float(x.shape[0]) ** 2
    other = "sample" if scale == "mean" else "mean"
    converted = sgs.sum_sq(params, scale=other)
    assert_close(converted, [e * (n2 if other == "sample" else 1 / n2) for e in expected], f"{kind} as {other}")

    # the same samples in two micro-batches (mean losses divided by their number), then clipping
    sgs.zero_()
    model.zero_grad()
    half = x.shape[0] // 2
    for part in (x[:half], x[half:]):
        losses = per_sample_losses(model(part))
        (losses.mean() / 2 if reduction == "mean" else losses.sum()).backward()
    total = nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e-3)
    assert total > 1e-3  # it did clip
    assert sgs.batch_size == x.shape[0]
    assert_close(sgs.sum_sq(params), expected, f"{kind} {reduction}, two micro-batches, clipped")


@pytest.mark.parametrize("kind", ["linear-seq", "conv1d", "conv2d", "conv3d", "conv-one-channel", "fallback"])
def test_sum_sq_in_chunks_of_one_sample_matches_brute_force(kind):
    """max_chunk_elements=1: every chunked form takes the samples one at a time (and the chunks add up)."""
    model, x, _ = make(kind)
    params, expected = brute_force(model, x, "mean")
    sgs = alt.SumGradSquared(model, max_chunk_elements=1)
    model.zero_grad()
    per_sample_losses(model(x)).mean().backward()
    assert_close(sgs.sum_sq(params), expected, f"{kind} in chunks of one sample")


def test_every_parameter_of_a_transformer_is_covered_and_trains_with_gi_over_auto_adam():
    model, ids, _ = make("transformer")
    sgs = alt.SumGradSquared(model)
    opt = alt.GI(model.parameters(), base="auto-adam")
    names = [n for n, _ in model.named_parameters()]
    assert any("in_proj_weight" in n for n in names) and any("out_proj" in n for n in names)
    losses = []
    for t in range(40):
        def closure(backward=True):
            opt.zero_grad()
            loss = per_sample_losses(model(ids)).mean()
            if backward:
                loss.backward()
            return loss
        losses.append(float(opt.step(closure, sum_sq=sgs)))
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0], losses
    assert sgs.batch_size is None, "the step consumed S"


def test_step_consumes_and_zero_grad_clears():
    model, x, _ = make("mlp")
    sgs = alt.SumGradSquared(model)
    opt = alt.AutoSGD(model.parameters())
    for _ in range(2):  # accumulates until consumed
        per_sample_losses(model(x)).mean().backward()
    assert sgs.batch_size == 2 * x.shape[0]
    opt.step(sum_sq=sgs)
    assert sgs.batch_size is None
    per_sample_losses(model(x)).mean().backward()
    opt.zero_grad()
    assert sgs.batch_size is None
    with pytest.raises(autolr.Error, match="yet"):
        sgs.sum_sq(list(model.parameters()))


def test_couplings_and_bad_input_are_clear_errors():
    bn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    alt.SumGradSquared(bn)
    with pytest.raises(autolr.Error, match="BatchNorm2d normalises with the batch"):
        bn(torch.randn(4, 1, 5, 5))
    emb = nn.Embedding(5, 3, scale_grad_by_freq=True)
    alt.SumGradSquared(emb)
    with pytest.raises(autolr.Error, match="scale_grad_by_freq"):
        emb(torch.tensor([[1, 2]]))
    attn = nn.MultiheadAttention(4, 2, dropout=0.1, batch_first=True)
    alt.SumGradSquared(attn)
    with pytest.raises(autolr.Error, match="dropout"):
        attn(*(torch.randn(2, 3, 4),) * 3)
    with pytest.raises(autolr.Error, match="reduction"):
        alt.SumGradSquared(nn.Linear(2, 2), reduction="avg")
    with pytest.raises(autolr.Error, match="no trainable parameters"):
        alt.SumGradSquared(nn.ReLU())
    model = nn.Linear(2, 2)
    sgs = alt.SumGradSquared(model)
    with pytest.raises(autolr.Error, match="not a trainable parameter"):
        sgs.sum_sq([nn.Parameter(torch.zeros(2))])


def test_grad_scaler_scale_is_divided_out():
    model, x, _ = make("mlp")
    params, expected = brute_force(model, x, "mean")
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    sgs = alt.SumGradSquared(model, scaler=scaler)
    model.zero_grad()
    scaler.scale(per_sample_losses(model(x)).mean()).backward()
    assert_close(sgs.sum_sq(params), expected, "scaled loss")
