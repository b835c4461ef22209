"""minipuzzle_kernels against an independent float64 reference (log_softmax / kl_div / cross_entropy with
autograd): values and gradients for every divergence, temperature != 1, CE mixing, ignore_index, chunk sizes that
do not divide the token count, the Liger-compatible modules, bad input, and torch.compile(fullgraph=True)."""
import pytest
import torch
import torch.nn.functional as F

import minipuzzle_kernels as mk
from conftest import DEVICE

DIVERGENCES = ["forward_kl", "reverse_kl", "jsd"]


def reference(student, teacher, labels=None, divergence="forward_kl", temperature=1.0, jsd_beta=0.5,
              kd_weight=1.0, ce_weight=0.0, ignore_index=-100, reduction="mean"):
    """Float64 KD loss from torch's own functions; differentiable in `student`."""
    V = student.shape[-1]
    s, t = student.reshape(-1, V).double(), teacher.reshape(-1, V).double()
    log_q, log_p = F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)
    # F.kl_div(input, target, log_target=True) = exp(target) * (target - input), summed per row: KL(target || input)
    if divergence == "forward_kl":
        d = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
    elif divergence == "reverse_kl":
        d = F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1)
    else:
        log_m = torch.log(jsd_beta * log_p.exp() + (1 - jsd_beta) * log_q.exp())
        d = (jsd_beta * F.kl_div(log_m, log_p, log_target=True, reduction="none").sum(-1)
             + (1 - jsd_beta) * F.kl_div(log_m, log_q, log_target=True, reduction="none").sum(-1))
    per_token = kd_weight * temperature ** 2 * d
    if labels is None:
        valid = torch.ones(s.shape[0], dtype=torch.bool)
    else:
        flat = labels.reshape(-1).cpu()
        valid = flat != ignore_index
        if ce_weight:
            per_token = per_token + ce_weight * F.cross_entropy(s, torch.where(valid, flat, 0).to(s.device),
                                                                reduction="none")
    per_token = torch.where(valid.to(s.device), per_token, 0.0)
    if reduction == "sum":
        return per_token.sum()
    return per_token.sum() / max(int(valid.sum()), 1)


def make_logits(shape, device, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(shape, generator=g) * scale).to(device)
    t = (torch.randn(shape, generator=g) * scale).to(device)
    return s, t


def make_labels(n_shape, vocab, device, ignore_index=-100, seed=1):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, n_shape, generator=g)
    labels.view(-1)[::3] = ignore_index  # every third token ignored
    return labels.to(device)


# The CUDA kernels build with --use_fast_math (approximate exp/log): looser bounds there than for the CPU twin.
LOOSEN = 10.0 if DEVICE == "cuda" else 1.0


def check(ours, ref, grad_ours, grad_ref, rtol=1e-5, atol=1e-6):
    rtol, atol = rtol * LOOSEN, atol * LOOSEN
    torch.testing.assert_close(ours.double().cpu(), ref.detach().cpu(), rtol=rtol, atol=atol)
    torch.testing.assert_close(grad_ours.double().cpu(), grad_ref.cpu(), rtol=rtol * 10, atol=atol)


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("with_labels", [False, True])
def test_kd_loss_matches_float64(device, divergence, temperature, with_labels):
    s, t = make_logits((3, 13, 509), device)  # [B, T, V], odd sizes
    labels = make_labels((3, 13), 509, device) if with_labels else None
    ce = 0.3 if with_labels else 0.0
    kw = dict(divergence=divergence, temperature=temperature, jsd_beta=0.3, kd_weight=0.7, ce_weight=ce)
    s1 = s.clone().requires_grad_()
    loss = mk.kd_loss(s1, t, labels, **kw)
    loss.backward()
    s2 = s.clone().double().requires_grad_()
    ref = reference(s2, t, labels, **kw)
    ref.backward()
    assert loss.dtype == torch.float32 and loss.dim() == 0
    check(loss, ref, s1.grad, s2.grad)


def test_kd_loss_row_chunks_and_sum(device):
    # The CPU twin works in chunks of 2^22 / V rows: V = 32768 gives 128-row chunks, 140 rows make 2 (the last short).
    s, t = make_logits((140, 32768), device, scale=2.0)
    labels = make_labels((140,), 32768, device)
    kw = dict(divergence="forward_kl", temperature=2.0, ce_weight=0.5, reduction="sum")
    s1 = s.clone().requires_grad_()
    loss = mk.kd_loss(s1, t, labels, **kw)
    (2.0 * loss).backward()  # a loss gradient != 1 scales the stored gradient
    s2 = s.clone().double().requires_grad_()
    ref = reference(s2, t, labels, **kw)
    (2.0 * ref).backward()
    check(loss, ref, s1.grad, s2.grad)


def test_kd_loss_bfloat16(device):
    s, t = make_logits((17, 1031), device)
    s, t = s.bfloat16(), t.bfloat16()
    s1 = s.clone().requires_grad_()
    loss = mk.kd_loss(s1, t, divergence="jsd", temperature=1.5)
    loss.backward()
    s2 = s.clone().double().requires_grad_()
    ref = reference(s2, t.double(), divergence="jsd", temperature=1.5)
    ref.backward()
    assert s1.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss.double().cpu(), ref.detach().cpu(), rtol=1e-4 * LOOSEN, atol=1e-5 * LOOSEN)
    torch.testing.assert_close(s1.grad.double().cpu(), s2.grad.cpu(), rtol=2e-2, atol=1e-5)  # bf16 rounding


def test_all_tokens_ignored_gives_zero(device):
    s, t = make_logits((4, 100), device)
    labels = torch.full((4,), -100, dtype=torch.long, device=device)
    s1 = s.clone().requires_grad_()
    loss = mk.kd_loss(s1, t, labels, ce_weight=1.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(s1.grad).item() == 0


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("teacher_form", ["hidden", "logits"])
def test_linear_kd_matches_float64(device, divergence, teacher_form):
    g = torch.Generator().manual_seed(5)
    N, Hs, Ht, V = 37, 24, 40, 301  # token_chunk 8 does not divide 37
    h = torch.randn(2, N, Hs, generator=g).to(device)
    w = (torch.randn(V, Hs, generator=g) * 0.3).to(device)
    th = torch.randn(2, N, Ht, generator=g).to(device)
    tw = (torch.randn(V, Ht, generator=g) * 0.3).to(device)
    labels = make_labels((2, N), V, device)
    kw = dict(divergence=divergence, temperature=2.0, jsd_beta=0.6, ce_weight=0.25)
    h1, w1 = h.clone().requires_grad_(), w.clone().requires_grad_()
    if teacher_form == "hidden":
        loss = mk.linear_kd(h1, w1, th, tw, labels, token_chunk=8, **kw)
    else:
        loss = mk.linear_kd(h1, w1, labels=labels, teacher_logits=th @ tw.T, token_chunk=8, **kw)
    loss.backward()
    h2, w2 = h.clone().double().requires_grad_(), w.clone().double().requires_grad_()
    ref = reference(h2 @ w2.T, th.double() @ tw.double().T, labels, **kw)
    ref.backward()
    check(loss, ref, h1.grad, h2.grad, rtol=2e-5, atol=1e-6)
    check(loss, ref, w1.grad, w2.grad, rtol=2e-5, atol=1e-6)


def test_linear_kd_weight_only_grad(device):
    # A frozen input (e.g. hidden states of a frozen trunk): only the lm_head gets a gradient.
    g = torch.Generator().manual_seed(6)
    h, w = torch.randn(19, 16, generator=g).to(device), torch.randn(97, 16, generator=g).to(device)
    th, tw = torch.randn(19, 8, generator=g).to(device), torch.randn(97, 8, generator=g).to(device)
    w1 = w.clone().requires_grad_()
    mk.linear_kd(h, w1, th, tw, token_chunk=5).backward()
    w2 = w.clone().double().requires_grad_()
    reference(h.double() @ w2.T, th.double() @ tw.double().T).backward()
    torch.testing.assert_close(w1.grad.double().cpu(), w2.grad.cpu(), rtol=1e-4 * LOOSEN, atol=1e-6 * LOOSEN)


@pytest.mark.parametrize("jsd_beta,expected", [(0.5, "jsd"), (0.0, "forward_kl"), (1.0, "reverse_kl")])
def test_fused_linear_kd_loss_is_liger_compatible(device, jsd_beta, expected):
    # Liger's LigerFusedLinearJSD value: JSD (forward KL at beta 0, reverse KL at 1) of softmax(logits / T), mean
    # over non-ignored shift_labels, without T^2.
    g = torch.Generator().manual_seed(7)
    h, w = torch.randn(29, 12, generator=g).to(device), torch.randn(211, 12, generator=g).to(device)
    th, tw = torch.randn(29, 20, generator=g).to(device), torch.randn(211, 20, generator=g).to(device)
    labels = make_labels((29,), 211, device)
    loss_fn = mk.FusedLinearKDLoss(jsd_beta=jsd_beta, ignore_index=-100, temperature=2.0)
    assert loss_fn.divergence == expected
    h1 = h.clone().requires_grad_()
    loss = loss_fn(h1, w, th, tw, labels)
    loss.backward()
    h2 = h.clone().double().requires_grad_()
    ref = reference(h2 @ w.double().T, th.double() @ tw.double().T, labels, divergence=expected, temperature=2.0,
                    jsd_beta=jsd_beta) / 4.0  # / T^2
    ref.backward()
    check(loss, ref, h1.grad, h2.grad, rtol=2e-5)
    # The functional form is the same call.
    torch.testing.assert_close(mk.fused_linear_jsd(h, w, th, tw, labels, jsd_beta, -100, 2.0), loss.detach())


@pytest.mark.filterwarnings("ignore:reduction")  # torch's note on kl_div's 'mean'
@pytest.mark.parametrize("reduction", ["mean", "batchmean", "sum"])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_loss_matches_torch(device, reduction, log_target):
    s, t = make_logits((6, 211), device)
    target = F.softmax(t, -1)
    if not log_target:  # exact zeros contribute 0 (torch's kl_div says NaN for a log target of -inf)
        target[0, :5] = 0.0
    target = target / target.sum(-1, keepdim=True)
    y_true = target.log() if log_target else target
    # y_pred = log_softmax(student logits), as a trainer feeds nn.KLDivLoss. Our kernel log-softmaxes y_pred again
    # (the identity on log-probabilities), so its gradient in y_pred is q - p where kl_div's is -p: they differ by
    # q, which log_softmax's backward removes; the gradients reaching the logits agree.
    s1 = s.clone().requires_grad_()
    loss = mk.KLDivLoss(reduction=reduction, log_target=log_target)(F.log_softmax(s1, -1), y_true)
    loss.backward()
    s2 = s.clone().double().requires_grad_()
    ref = F.kl_div(F.log_softmax(s2, -1), y_true.double(), reduction=reduction, log_target=log_target)
    ref.backward()
    scale = {"mean": 6 * 211, "batchmean": 6, "sum": 1}[reduction]
    torch.testing.assert_close(loss.double().cpu(), ref.detach().cpu(), rtol=1e-5 * LOOSEN, atol=1e-6 * LOOSEN / scale)
    torch.testing.assert_close(s1.grad.double().cpu(), s2.grad.cpu(), rtol=1e-4 * LOOSEN, atol=1e-6 * LOOSEN / scale)


def test_kd_loss_module_and_no_grad(device):
    s, t = make_logits((5, 64), device)
    labels = make_labels((5,), 64, device)
    module = mk.KDLoss(divergence="reverse_kl", temperature=3.0, ce_weight=0.2)
    with torch.no_grad():
        value = module(s, t, labels)
    torch.testing.assert_close(value.double().cpu(), reference(s, t, labels, divergence="reverse_kl",
                                                               temperature=3.0, ce_weight=0.2).cpu(),
                               rtol=1e-5 * LOOSEN, atol=1e-6 * LOOSEN)
    # Without a gradient request the op computes no gradient.
    _, grad = torch.ops.minipuzzle.kd_loss(s, t, labels, "reverse_kl", 3.0, 0.5, 1.0, 0.2, -100, "mean", False)
    assert grad.numel() == 0


def test_bad_input_raises_one_clear_error(device):
    s, t = make_logits((4, 10), device)
    with pytest.raises(RuntimeError, match="divergence is 'kl'"):
        mk.kd_loss(s, t, divergence="kl")
    with pytest.raises(RuntimeError, match="temperature must be > 0"):
        mk.kd_loss(s, t, temperature=0.0)
    with pytest.raises(RuntimeError, match="no labels were given"):
        mk.kd_loss(s, t, ce_weight=1.0)
    with pytest.raises(RuntimeError, match="same shape"):
        mk.kd_loss(s, t[:, :9])
    with pytest.raises(RuntimeError, match="do not match its lm_head"):
        mk.linear_kd(s, torch.randn(7, 9, device=device), s, torch.randn(7, 10, device=device))
    with pytest.raises(ValueError, match="jsd_beta"):
        mk.FusedLinearKDLoss(jsd_beta=1.5)


def test_second_backward_is_refused(device):
    # The gradient is made in forward and scaled in place at backward: a second backward through the same graph
    # must fail rather than hand out a twice-scaled gradient.
    s, t = make_logits((4, 10), device)
    s1 = s.clone().requires_grad_()
    loss = mk.kd_loss(s1, t)
    (2 * loss).backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (2 * loss).backward()


def test_torch_compile_fullgraph(device):
    """A training step built on both ops compiles into one graph (fullgraph=True raises on any graph break), with
    dynamic shapes (a second batch shape reuses it), and gives the eager values and gradients."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    g = torch.Generator().manual_seed(9)
    proj = torch.nn.Linear(16, 24).to(device)
    w = torch.nn.Parameter((torch.randn(130, 24, generator=g) * 0.2).to(device))
    tw = torch.randn(130, 12, generator=g).to(device)

    def step(x, th, labels):
        h = torch.tanh(proj(x))
        fused = mk.linear_kd(h, w, th, tw, labels, divergence="jsd", temperature=2.0, ce_weight=0.1, token_chunk=7)
        logits = h @ w.T
        plain = mk.kd_loss(logits, th @ tw.T, labels, divergence="reverse_kl", temperature=1.5)
        return fused + 0.5 * plain

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, backend=counter, fullgraph=True, dynamic=True)
    frames = []
    for batch, seq in ((2, 11), (3, 5)):
        x = torch.randn(batch, seq, 16, generator=g).to(device)
        th = torch.randn(batch, seq, 12, generator=g).to(device)
        labels = make_labels((batch, seq), 130, device)
        results = []
        for fn in (step, compiled):
            for p in (proj.weight, proj.bias, w):
                p.grad = None
            loss = fn(x, th, labels)
            loss.backward()
            results.append((loss.detach(), [p.grad.clone() for p in (proj.weight, proj.bias, w)]))
        torch.testing.assert_close(results[1][0], results[0][0])
        for a, b in zip(results[1][1], results[0][1]):
            torch.testing.assert_close(a, b)
        frames.append(counter.frame_count)
    # Compiled (Dynamo may trace the first call twice when the same step ran eagerly before; never more), and the
    # second shape reuses the dynamic graph.
    assert 1 <= frames[0] <= 2 and frames[1] == frames[0]


def test_gradient_buffers_are_handed_over_without_a_copy(device):
    # The forward's gradient buffer becomes .grad itself (autograd steals it): no copy of [N, V] or [V, H] at
    # backward, which on the GPU would cost as much as the KD kernel's own write.
    s, t = make_logits((8, 300), device)
    s1 = s.clone().requires_grad_()
    loss, grad = torch.ops.minipuzzle.kd_loss(s1, t, None, "forward_kl", 1.0, 0.5, 1.0, 0.0, -100, "mean", True)
    ptr = grad.data_ptr()
    del grad
    loss.backward()
    assert s1.grad.data_ptr() == ptr
    h = torch.randn(8, 16, device=device, requires_grad=True)
    w = torch.randn(300, 16, device=device, requires_grad=True)
    loss, gi, gw = torch.ops.minipuzzle.linear_kd(h, w, torch.randn(8, 4, device=device),
                                                  torch.randn(300, 4, device=device))
    ptrs = (gi.data_ptr(), gw.data_ptr())
    del gi, gw
    (3.0 * loss).backward()
    assert (h.grad.data_ptr(), w.grad.data_ptr()) == ptrs
