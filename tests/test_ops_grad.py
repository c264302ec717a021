"""Gradient checks of every op's backward against torch autograd (float64 reference), plus the
losses, dropout, the counter RNG and AdamW."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from magnet import _C  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5


def close(name, got, want, rtol=RTOL, atol=ATOL):
    """assert_allclose that also prints the largest absolute error (see it with pytest -s)."""
    want = want.detach().double().numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
    got = np.asarray(got, dtype=np.float64)
    err = float(np.max(np.abs(got - want))) if got.size else 0.0
    print(f"{name}: max abs err {err:.3g} (max |ref| {float(np.max(np.abs(want), initial=0)):.3g})")
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=name)


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def leaf(a):
    return torch.tensor(a, dtype=torch.float64, requires_grad=True)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# --- matmul ---------------------------------------------------------------------------------


@pytest.mark.parametrize("has_bias", [True, False])
def test_matmul(rng, has_bias):
    N, n_in, n_out = 13, 37, 21
    x, w, dout = rand(rng, N, n_in), rand(rng, n_out, n_in), rand(rng, N, n_out)
    b = rand(rng, n_out) if has_bias else None
    out, dx, dw, db = _C.op_matmul(x, w, b, dout)
    tx, tw = leaf(x), leaf(w)
    tb = leaf(b) if has_bias else None
    ref = F.linear(tx, tw, tb)
    ref.backward(torch.tensor(dout, dtype=torch.float64))
    close("matmul out", out, ref)
    close("matmul dinp", dx, tx.grad)
    close("matmul dweight", dw, tw.grad)
    if has_bias:
        close("matmul dbias", db, tb.grad)
    else:
        assert db is None


@pytest.mark.parametrize("N", [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17])
@pytest.mark.parametrize("n_in", [8, 37, 576])
def test_matmul_few_rows(rng, N, n_in):
    """Up to SKINNY_MAX_ROWS rows take the weight-streaming kernels (decode steps): dot
    products up to 2 rows, packed inputs and broadcast weights above, the GEMM past 16. Odd
    sizes included: the tile edges repeat rows or pad lanes and drop their results."""
    n_out = 19
    x, w, dout = rand(rng, N, n_in), rand(rng, n_out, n_in), rand(rng, N, n_out)
    b = rand(rng, n_out)
    out, *_ = _C.op_matmul(x, w, b, dout)
    close("matmul out", out, F.linear(leaf(x), leaf(w), leaf(b)))


def test_matmul_few_rows_do_not_depend_on_their_neighbours(rng):
    """Decode steps: within each kernel's range (1-2 rows, 3 to SKINNY_MAX_ROWS: 16 with AVX2,
    4 in a build without) a row gets bit-identical output whichever rows share the call."""
    most = _C.SKINNY_MAX_ROWS
    x, w, dout = rand(rng, most, 77), rand(rng, 45, 77), rand(rng, most, 45)
    pair, *_ = _C.op_matmul(x[:2], w, None, dout[:2])
    for i in range(2):
        alone, *_ = _C.op_matmul(x[i:i + 1], w, None, dout[i:i + 1])
        assert np.array_equal(alone[0], pair[i]), f"row {i} changed with its neighbour"
    full, *_ = _C.op_matmul(x, w, None, dout)
    for n in sorted({3, 5, 8, 9, most - 1} & set(range(3, most))):
        some, *_ = _C.op_matmul(x[most - n:], w, None, dout[most - n:])
        assert np.array_equal(some, full[most - n:]), f"{n} rows changed with their neighbours"


@pytest.mark.parametrize("N", [17, 150, 301])
@pytest.mark.parametrize("n_in", [7, 37, 576, 600])
@pytest.mark.parametrize("n_out", [1, 19, 200, 8193])
def test_matmul_many_rows(rng, N, n_in, n_out):
    """Past 16 rows the forward takes the packed GEMM (csrc/ops/packed_matmul.c; OpenBLAS in
    builds for AVX-512), and past MG_PACKED_MAX_COLS = 8192 columns OpenBLAS. The sizes cross
    every edge of the packed one: rows past its 144-row block and not a multiple of its 6-row
    tile, columns not a multiple of its 16-column tile, inputs shorter than its 8-wide packing,
    and inputs in several blocks (576 is three blocks of 192, 600 three of 200). Weights scaled
    as in a model (outputs of order 1), so that float32 rounding stays within the float64
    reference's tolerance."""
    x, w, dout = rand(rng, N, n_in), rand(rng, n_out, n_in, scale=n_in**-0.5), rand(rng, N, n_out)
    b = rand(rng, n_out)
    out, *_ = _C.op_matmul(x, w, b, dout)
    close("matmul out", out, F.linear(leaf(x), leaf(w), leaf(b)))


@pytest.mark.skipif(not _C.HAS_PACKED_MATMUL,
                    reason="this build uses OpenBLAS for many rows (no AVX2, or AVX-512)")
def test_matmul_many_rows_do_not_depend_on_the_batch_or_threads(rng):
    """The packed GEMM sums every output in the same order whatever the batch and the thread
    count: a slice of the rows gives bit-identical results alone, with one thread or several."""
    x, w, dout = rand(rng, 300, 600), rand(rng, 200, 600), rand(rng, 300, 200)
    before = _C.get_num_threads()
    try:
        _C.set_num_threads(1)
        one, *_ = _C.op_matmul(x, w, None, dout)
        _C.set_num_threads(3)
        three, *_ = _C.op_matmul(x, w, None, dout)
        part, *_ = _C.op_matmul(x[101:200], w, None, dout[101:200])
    finally:
        _C.set_num_threads(before)
    assert np.array_equal(one, three), "the thread count changed the product"
    assert np.array_equal(part, three[101:200]), "rows changed with the rest of the batch"


# --- norms ----------------------------------------------------------------------------------


def test_rmsnorm(rng):
    N, D, eps = 300, 70, 1e-5  # > one 256-row block, D not a multiple of the column chunk
    x, w, dout = rand(rng, N, D), rand(rng, D), rand(rng, N, D)
    out, dx, dw = _C.op_rmsnorm(x, w, eps, dout)
    tx, tw = leaf(x), leaf(w)
    ref = tx * torch.rsqrt(tx.pow(2).mean(-1, keepdim=True) + eps) * tw
    ref.backward(torch.tensor(dout, dtype=torch.float64))
    close("rmsnorm out", out, ref)
    close("rmsnorm dinp", dx, tx.grad)
    close("rmsnorm dweight", dw, tw.grad, atol=1e-4)


def test_layernorm(rng):
    N, D, eps = 300, 70, 1e-5
    x, w, b, dout = rand(rng, N, D), rand(rng, D), rand(rng, D), rand(rng, N, D)
    x += 3.0  # a non-zero mean exercises the centring
    out, dx, dw, db = _C.op_layernorm(x, w, b, eps, dout)
    tx, tw, tb = leaf(x), leaf(w), leaf(b)
    ref = F.layer_norm(tx, (D,), tw, tb, eps)
    ref.backward(torch.tensor(dout, dtype=torch.float64))
    close("layernorm out", out, ref)
    close("layernorm dinp", dx, tx.grad)
    close("layernorm dweight", dw, tw.grad, atol=1e-4)
    close("layernorm dbias", db, tb.grad, atol=1e-4)


# --- rope -----------------------------------------------------------------------------------


def test_rope(rng):
    N, H, hd = 11, 3, 16
    x, dout = rand(rng, N, H, hd), rand(rng, N, H, hd)
    pos = rng.integers(0, 200, N).astype(np.int32)
    inv_freq = (1.0 / 10000.0 ** (np.arange(0, hd, 2) / hd)).astype(np.float32)
    out, dx = _C.op_rope(x, pos, inv_freq, dout)
    angle = torch.tensor(pos.astype(np.float32)[:, None] * inv_freq[None, :], dtype=torch.float64)
    cos = torch.cat([angle.cos(), angle.cos()], -1)[:, None, :]
    sin = torch.cat([angle.sin(), angle.sin()], -1)[:, None, :]
    tx = leaf(x)
    rot = torch.cat([-tx[..., hd // 2:], tx[..., : hd // 2]], -1)
    ref = tx * cos + rot * sin
    ref.backward(torch.tensor(dout, dtype=torch.float64))
    close("rope out", out, ref)
    close("rope dx", dx, tx.grad)


# --- attention ------------------------------------------------------------------------------


def attention_reference(q, k, v, roles, segments):
    """Dense float64 attention under the unified rule; rows that see nothing output zero."""
    B, T, Hq, hd = q.shape
    group = Hq // k.shape[2]
    seg = torch.tensor(segments, dtype=torch.int64)
    role = torch.tensor(roles, dtype=torch.int64)
    idx = torch.arange(T)
    allowed = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)
    causal = idx[None, None, :] <= idx[None, :, None]
    allowed &= (role[:, None, :] == 0) | ((role[:, :, None] == 1) & causal)
    valid = allowed.any(-1)  # [B, T]
    allowed = allowed | ~valid[:, :, None]
    qh = q.permute(0, 2, 1, 3)
    kh = k.repeat_interleave(group, dim=2).permute(0, 2, 1, 3)
    vh = v.repeat_interleave(group, dim=2).permute(0, 2, 1, 3)
    s = qh @ kh.transpose(-1, -2) / hd**0.5
    s = s.masked_fill(~allowed[:, None], float("-inf"))
    p = torch.softmax(s, -1) * valid[:, None, :, None]
    return (p @ vh).permute(0, 2, 1, 3)


def attention_case(name, B, T):
    """roles uint8[B,T], segments int32[B,T] for each named layout."""
    roles = np.zeros((B, T), np.uint8)
    seg = np.zeros((B, T), np.int32)
    if name == "span":
        roles[:] = 1
    elif name == "mixed":
        roles[:, 5:12] = 1
        roles[:, 20:23] = 1
        roles[-1, T - 4:] = 1
    elif name == "padding":
        roles[:, 8:14] = 1
        seg[0, T - 9:] = -1
        seg[-1, :3] = -1
    elif name == "packed":
        seg[:, T // 2:] = 1
        roles[:, 4:9] = 1
        roles[:, T // 2 + 2:T // 2 + 6] = 1
        seg[-1, T - 2:] = -1
    return roles, seg


@pytest.mark.parametrize(
    "layout,Hq,Hkv,hd",
    [
        ("span", 2, 2, 24),
        ("context", 2, 2, 24),
        ("mixed", 4, 2, 24),
        ("padding", 4, 2, 40),
        ("packed", 4, 2, 16),
        ("mixed", 3, 1, 64),
    ],
)
def test_attention(rng, layout, Hq, Hkv, hd):
    B, T = 2, 37
    q, k, v = rand(rng, B, T, Hq, hd), rand(rng, B, T, Hkv, hd), rand(rng, B, T, Hkv, hd)
    dout = rand(rng, B, T, Hq, hd)
    roles, seg = attention_case(layout, B, T)
    out, dq, dk, dv = _C.op_attention(q, k, v, roles, seg, dout)
    tq, tk, tv = leaf(q), leaf(k), leaf(v)
    ref = attention_reference(tq, tk, tv, roles, seg)
    ref.backward(torch.tensor(dout, dtype=torch.float64))
    tag = f"attention[{layout},Hq={Hq},Hkv={Hkv}]"
    close(f"{tag} out", out, ref)
    close(f"{tag} dq", dq, tq.grad)
    close(f"{tag} dk", dk, tk.grad)
    close(f"{tag} dv", dv, tv.grad)
    pad = seg < 0
    assert not dq[pad].any() and not dk[pad].any() and not dv[pad].any()


def test_attention_deterministic_across_threads(rng):
    B, T, Hq, Hkv, hd = 3, 29, 4, 2, 16
    q, k, v = rand(rng, B, T, Hq, hd), rand(rng, B, T, Hkv, hd), rand(rng, B, T, Hkv, hd)
    dout = rand(rng, B, T, Hq, hd)
    roles, seg = attention_case("mixed", B, T)
    before = _C.get_num_threads()
    try:
        _C.set_num_threads(1)
        one = _C.op_attention(q, k, v, roles, seg, dout)
        _C.set_num_threads(3)
        three = _C.op_attention(q, k, v, roles, seg, dout)
    finally:
        _C.set_num_threads(before)
    for a, b in zip(one, three, strict=True):
        assert np.array_equal(a, b)


def test_attention_rejects_bad_input(rng):
    q = rand(rng, 1, 4, 3, 8)
    kv = rand(rng, 1, 4, 2, 8)
    roles, seg = np.zeros((1, 4), np.uint8), np.zeros((1, 4), np.int32)
    with pytest.raises(ValueError):
        _C.op_attention(q, kv, kv, roles, seg, q)  # 3 query heads over 2 kv heads
    with pytest.raises(TypeError):
        _C.op_attention(q.astype(np.float64), kv, kv, roles, seg, q)
    with pytest.raises(ValueError):
        _C.op_attention(q, rand(rng, 1, 4, 3, 8), rand(rng, 1, 4, 3, 8), roles + 2, seg, q)


# --- activations ----------------------------------------------------------------------------


def test_swiglu(rng):
    g, u, dout = rand(rng, 5, 67, scale=3.0), rand(rng, 5, 67), rand(rng, 5, 67)
    out, dg, du = _C.op_swiglu(g, u, dout)
    tg, tu = leaf(g), leaf(u)
    ref = F.silu(tg) * tu
    ref.backward(torch.tensor(dout, dtype=torch.float64))
    close("swiglu out", out, ref)
    close("swiglu dgate", dg, tg.grad)
    close("swiglu dup", du, tu.grad)


def test_gelu_tanh(rng):
    x, dout = rand(rng, 7, 53, scale=3.0), rand(rng, 7, 53)
    out, dx = _C.op_gelu_tanh(x, dout)
    tx = leaf(x)
    ref = F.gelu(tx, approximate="tanh")
    ref.backward(torch.tensor(dout, dtype=torch.float64))
    close("gelu_tanh out", out, ref)
    close("gelu_tanh dx", dx, tx.grad)


# --- embedding ------------------------------------------------------------------------------


@pytest.mark.parametrize("learned_pos", [True, False])
def test_embedding(rng, learned_pos):
    V, P, D, N = 11, 9, 70, 40  # many repeated ids
    wte, dout = rand(rng, V, D), rand(rng, N, D)
    wpe = rand(rng, P, D) if learned_pos else None
    tokens = rng.integers(0, V, N).astype(np.int32)
    pos = rng.integers(0, P, N).astype(np.int32)
    out, dwte, dwpe = _C.op_embedding(tokens, pos, wte, wpe, dout)
    twte = leaf(wte)
    ref = F.embedding(torch.tensor(tokens, dtype=torch.int64), twte)
    if learned_pos:
        twpe = leaf(wpe)
        ref = ref + F.embedding(torch.tensor(pos, dtype=torch.int64), twpe)
    ref.backward(torch.tensor(dout, dtype=torch.float64))
    close("embedding out", out, ref)
    close("embedding dwte", dwte, twte.grad)
    if learned_pos:
        close("embedding dwpe", dwpe, twpe.grad)
    else:
        assert dwpe is None
    with pytest.raises(ValueError):
        _C.op_embedding(tokens + V, pos, wte, wpe, dout)


# --- losses ---------------------------------------------------------------------------------


def test_cross_entropy(rng):
    N, V = 20, 103
    logits = rand(rng, N, V, scale=4.0)
    labels = rng.integers(0, V, N).astype(np.int32)
    labels[[1, 5, 6, 19]] = -100
    scale = 0.37
    loss_sum, count, dl = _C.op_cross_entropy(logits, labels, scale)
    tl = leaf(logits)
    ref = F.cross_entropy(tl, torch.tensor(labels, dtype=torch.int64), ignore_index=-100,
                          reduction="sum")
    (ref * scale).backward()
    assert count == N - 4
    close("cross_entropy loss_sum", loss_sum, ref, rtol=1e-5)
    close("cross_entropy dlogits", dl, tl.grad)
    assert not dl[labels == -100].any()
    # all ignored: zero loss, zero count, zero gradient
    s, c, d = _C.op_cross_entropy(logits, np.full(N, -100, np.int32))
    assert s == 0.0 and c == 0 and not d.any()
    with pytest.raises(ValueError):
        _C.op_cross_entropy(logits, np.full(N, V, np.int32))
    with pytest.raises(ValueError):
        _C.op_cross_entropy(logits, labels[:-1])
    with pytest.raises(TypeError):
        _C.op_cross_entropy(logits, labels.astype(np.int64))


def test_infonce(rng):
    n, D, temperature, scale = 9, 33, 0.05, 0.5
    a, b = rand(rng, n, D), rand(rng, n, D)
    b[:3] = a[:3] + 0.3 * b[:3]  # a few close pairs
    loss, da, db = _C.op_infonce(a, b, temperature, scale)
    ta, tb = leaf(a), leaf(b)
    sim = F.normalize(ta, dim=-1) @ F.normalize(tb, dim=-1).T / temperature
    ref = F.cross_entropy(sim, torch.arange(n))
    (ref * scale).backward()
    close("infonce loss", loss, ref, rtol=1e-5, atol=1e-5)
    close("infonce da", da, ta.grad, atol=1e-4)
    close("infonce db", db, tb.grad, atol=1e-4)
    with pytest.raises(ValueError):
        _C.op_infonce(a, b, 0.0)
    with pytest.raises(ValueError):
        _C.op_infonce(a, b[:-1], 0.05)


# --- dropout and the counter RNG ------------------------------------------------------------


def test_dropout(rng):
    n, p = 200_000, 0.25
    x = rand(rng, n) + 5.0  # no exact zeros, so out == 0 marks the dropped elements
    dout = rand(rng, n)
    out, dx = _C.op_dropout(x, p, 7, 3, dout)
    out2, dx2 = _C.op_dropout(x, p, 7, 3, dout)
    assert np.array_equal(out, out2) and np.array_equal(dx, dx2)
    keep = out != 0
    assert abs(1.0 - keep.mean() - p) < 0.005
    np.testing.assert_allclose(out[keep], x[keep] / (1 - p), rtol=1e-6)
    want = np.where(keep, dout * (np.float32(1) / np.float32(1 - p)), 0).astype(np.float32)
    np.testing.assert_array_equal(dx, want)
    ones = np.ones(n, np.float32)
    assert abs(_C.op_dropout(ones, p, 7, 3, ones)[0].mean() - 1.0) < 0.01
    other = _C.op_dropout(x, p, 7, 4, dout)[0] != 0
    assert (other != keep).mean() > 0.2
    reseeded = _C.op_dropout(x, p, 8, 3, dout)[0] != 0
    assert (reseeded != keep).mean() > 0.2
    # the mask is a function of (seed, offset, index) alone: same for any thread count
    before = _C.get_num_threads()
    try:
        _C.set_num_threads(1)
        single = _C.op_dropout(x, p, 7, 3, dout)
    finally:
        _C.set_num_threads(before)
    assert np.array_equal(single[0], out) and np.array_equal(single[1], dx)
    zero = _C.op_dropout(x, 0.0, 7, 3, dout)
    assert np.array_equal(zero[0], x) and np.array_equal(zero[1], dout)
    with pytest.raises(ValueError):
        _C.op_dropout(x, 1.0, 7, 3, dout)


@pytest.mark.parametrize("p", [0.05, 0.1, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("n", [7, 8, 1003, 40_001])
def test_dropout_mask_is_the_counter_rng(rng, p, n):
    """Element i is kept iff the counter RNG's draw i of (seed, offset) is >= p, exactly: the
    vectorised mask (eight elements at a time) and the scalar tail agree with op_rng."""
    x = rand(rng, n) + 5.0
    dout = rand(rng, n)
    out, dx = _C.op_dropout(x, p, 11, 5, dout)
    want_keep = _C.op_rng(11, 5, 0, n) >= np.float32(p)
    assert np.array_equal(out != 0, want_keep)
    scale = np.float32(1) / (np.float32(1) - np.float32(p))  # as the C code rounds it
    np.testing.assert_array_equal(out, np.where(want_keep, x * scale, 0).astype(np.float32))
    np.testing.assert_array_equal(dx, np.where(want_keep, dout * scale, 0).astype(np.float32))


def test_rng():
    u = _C.op_rng(42, 5, 0, 100_000)
    assert u.dtype == np.float32 and u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.01
    assert np.array_equal(_C.op_rng(42, 5, 1000, 10), u[1000:1010])  # counter-based
    assert not np.array_equal(_C.op_rng(42, 6, 0, 100), u[:100])
    r = _C.op_rng(42, 5, 0, 60_000, 6)
    assert r.min() == 0 and r.max() == 5
    assert np.all(np.abs(np.bincount(r) / r.size - 1 / 6) < 0.01)


# --- AdamW and the global norm --------------------------------------------------------------


def test_adamw(rng):
    shape, lr, b1, b2, eps, wd = (17, 5), 1e-2, 0.9, 0.95, 1e-8, 0.1
    param = rand(rng, *shape)
    tp = torch.nn.Parameter(torch.tensor(param))
    opt = torch.optim.AdamW([tp], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    m = np.zeros(shape, np.float32)
    v = np.zeros(shape, np.float32)
    p = param
    for step in range(1, 6):
        g = rand(rng, *shape)
        tp.grad = torch.tensor(g)
        opt.step()
        p, m, v = _C.op_adamw(p, g, m, v, lr, b1, b2, eps, wd, step)
        st = opt.state[tp]
        close(f"adamw param step {step}", p, tp, rtol=1e-5, atol=1e-6)
        close(f"adamw m step {step}", m, st["exp_avg"], rtol=1e-5, atol=1e-7)
        close(f"adamw v step {step}", v, st["exp_avg_sq"], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError):
        _C.op_adamw(p, g, m, v, lr, b1, b2, eps, wd, 0)


def test_grad_global_norm(rng):
    bufs = [rand(rng, 1000), rand(rng, 3, 7), rand(rng, 1)]
    want = np.sqrt(sum(float(np.sum(b.astype(np.float64) ** 2)) for b in bufs))
    assert abs(_C.op_grad_global_norm(bufs) - want) < 1e-9 * want
    assert _C.op_grad_global_norm([]) == 0.0
    with pytest.raises(TypeError):
        _C.op_grad_global_norm([np.ones(3)])
