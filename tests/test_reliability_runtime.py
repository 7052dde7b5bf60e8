"""Runtime reliability of every op: concurrent calls from many threads, determinism (bitwise repeatable at a
fixed thread count, use_deterministic_algorithms honoured), and model serialisation round trips."""

import copy
import io
import pickle
import threading

import pytest
import torch

import fusedops

_THREAD_COUNTS = (1, 2)


def _leaf(shape, layout, generator):
    x = torch.randn(shape, dtype=torch.float64, generator=generator)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_()


def _weights(shapes, generator):
    """float64 leaves of the given shapes (an op's weights and biases), drawn from `generator`."""
    return [torch.randn(s, dtype=torch.float64, generator=generator, requires_grad=True) for s in shapes]


def _case_calls():
    """(name, fn) pairs: each fn(seed) runs one op (forward and, where it has them, all gradients) on its own
    shape and returns the result tensors."""

    def depthwise(layout, stride, mult):
        def run(seed):
            g = torch.Generator().manual_seed(seed)
            c = 3 + seed % 5
            x = _leaf((2, c, 9 + seed % 7, 11), layout, g)
            w = torch.randn(c * mult, 1, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
            b = torch.randn(c * mult, dtype=torch.float64, generator=g, requires_grad=True)
            y = fusedops.depthwise_conv2d(x, w, b, stride, 1)
            return (y, *torch.autograd.grad(y, (x, w, b), torch.ones_like(y)))
        return run

    def dwpw(layout):
        def run(seed):
            g = torch.Generator().manual_seed(seed)
            c = 4 + seed % 3
            x = _leaf((2, c, 8 + seed % 5, 8), layout, g)
            ts = _weights(((c, 1, 3, 3), (c,), (6, c, 1, 1), (6,)), g)
            y = fusedops.dwpw_conv2d(x, *ts, 1, 1, 1, "relu6", "hardswish")
            return (y, *torch.autograd.grad(y, (x, *ts), torch.ones_like(y)))
        return run

    def shuffle(seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(2, 6 * (1 + seed % 3), 5, 7, dtype=torch.float64, requires_grad=True, generator=g)
        y = fusedops.channel_shuffle(x, 3)
        b = torch.randn(x.shape, dtype=torch.float64, generator=g)
        z = fusedops.concat_shuffle(x, b, 2)
        return (y, z, *torch.autograd.grad((y.sum() + z.square().sum()), (x,)))

    def inverted_residual(layout, stride):
        def run(seed):
            g = torch.Generator().manual_seed(seed)
            c, hidden = 4 + seed % 3, 12
            x = _leaf((2, c, 8 + seed % 5, 9), layout, g)
            ts = _weights(((hidden, c, 1, 1), (hidden,), (hidden, 1, 3, 3), (hidden,), (c, hidden, 1, 1), (c,)), g)
            y = fusedops.inverted_residual(x, *ts, stride=stride, activation="relu6")
            return (y, *torch.autograd.grad(y, (x, *ts), torch.ones_like(y)))
        return run

    def ghost(layout, ratio):
        def run(seed):
            g = torch.Generator().manual_seed(seed)
            c, init = 3 + seed % 4, 4
            x = _leaf((2, c, 7 + seed % 5, 8), layout, g)
            ts = _weights(((init, c, 1, 1), (init,), (init * (ratio - 1), 1, 3, 3), (init * (ratio - 1),)), g)
            y = fusedops.ghost_module(x, *ts, init * ratio - 1, activation="relu")
            return (y, *torch.autograd.grad(y, (x, *ts), torch.ones_like(y)))
        return run

    def shufflenet_v2_unit(layout, stride):
        def run(seed):
            g = torch.Generator().manual_seed(seed)
            c = 4 + 2 * (seed % 3)
            # Stride 1: the branch on the input's second half; stride 2: the down-sampling unit, 6 channels a half.
            b, branch_in = (c // 2, c // 2) if stride == 1 else (6, c)
            x = _leaf((2, c, 8 + seed % 5, 9), layout, g)
            shapes = [(b, branch_in, 1, 1), (b,), (b, 1, 3, 3), (b,), (b, b, 1, 1), (b,)]
            if stride != 1:
                shapes += [(c, 1, 3, 3), (c,), (b, c, 1, 1), (b,)]
            ts = _weights(shapes, g)
            y = fusedops.shufflenet_v2_unit(x, *ts[:6], shortcut=tuple(ts[6:]) if stride != 1 else None,
                                            stride=stride)
            return (y, *torch.autograd.grad(y, (x, *ts), torch.ones_like(y)))
        return run

    return [("depthwise_nchw", depthwise("nchw", 1, 1)), ("depthwise_cl", depthwise("cl", 1, 1)),
            ("depthwise_cl_s2_m2", depthwise("cl", 2, 2)), ("depthwise_nchw_s2", depthwise("nchw", 2, 1)),
            ("dwpw_cl", dwpw("cl")), ("dwpw_nchw", dwpw("nchw")), ("shuffle", shuffle),
            ("inverted_residual_cl", inverted_residual("cl", 1)), ("inverted_residual_nchw_s2",
                                                                   inverted_residual("nchw", 2)),
            ("ghost_cl", ghost("cl", 2)), ("ghost_nchw_ratio3", ghost("nchw", 3)),
            ("shufflenet_v2_unit_cl", shufflenet_v2_unit("cl", 1)),
            ("shufflenet_v2_unit_nchw_s2", shufflenet_v2_unit("nchw", 2))]


def _module_calls(wrap=lambda module: module):
    """Modules shared by every thread (their folded-weight handling included), each run (as wrap(module)) on its
    own input."""
    torch.manual_seed(0)
    blocks = {"separable": fusedops.nn.DepthwiseSeparableConv2d(8, 16).double().eval(),
              "separable_frozen": fusedops.nn.DepthwiseSeparableConv2d(8, 16).double().eval().freeze(),
              "depthwise": fusedops.nn.DepthwiseConv2d(8, 16, 3, padding=1).double(),
              "inverted_residual": fusedops.nn.InvertedResidual(8, 8, 1, 6).double().eval(),
              "inverted_residual_frozen": fusedops.nn.InvertedResidual(8, 8, 1, 6).double().eval().freeze(),
              "ghost": fusedops.nn.GhostModule(8, 12).double().eval(),
              "ghost_frozen": fusedops.nn.GhostModule(8, 12).double().eval().freeze(),
              "shufflenet_v2_unit": fusedops.nn.ShuffleNetV2Unit(8, 8, 1).double().eval(),
              "shufflenet_v2_unit_frozen": fusedops.nn.ShuffleNetV2Unit(8, 8, 1).double().eval().freeze(),
              "shufflenet_v2_unit_s2_frozen": fusedops.nn.ShuffleNetV2Unit(8, 16, 2).double().eval().freeze()}
    for m in blocks.values():
        for bn in m.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                with torch.no_grad():
                    bn.running_var.uniform_(0.5, 2.0)
                    bn.running_mean.normal_()

    def call(m):
        def run(seed):
            x = torch.randn(1 + seed % 2, 8, 6 + seed % 4, 7, dtype=torch.float64,
                            generator=torch.Generator().manual_seed(seed)).contiguous(
                memory_format=torch.channels_last)
            with torch.no_grad():
                return (m(x),)
        return run

    return [(name, call(wrap(m))) for name, m in blocks.items()]


def _run_all(calls, seeds):
    return {(name, seed): fn(seed) for name, fn in calls for seed in seeds}


def _assert_same(a, b, exact):
    for key in a:
        for x, y in zip(a[key], b[key]):
            if exact:
                assert torch.equal(x, y), key
            else:
                torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12, msg=str(key))


def _run_from_threads(calls, seeds, repeats, intra_op_threads=None):
    """The results of 8 Python threads running all `calls` at once, each starting at another call (different ops
    at the same time), `repeats` times: one _run_all dict per thread (its last repeat). Errors are raised here."""
    results, errors = [None] * 8, []
    barrier = threading.Barrier(8)

    def worker(i):
        try:
            if intra_op_threads is not None:
                torch.set_num_threads(intra_op_threads)  # the intra-op thread count is per calling thread
            barrier.wait()
            for _ in range(repeats):
                results[i] = _run_all(calls[i % len(calls):] + calls[:i % len(calls)], seeds)
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors
    return results


@pytest.mark.parametrize("threads", _THREAD_COUNTS)
def test_concurrent_calls_match_serial_calls(threads):
    """8 Python threads calling every op (and shared modules) at once, on different shapes, give the serial
    results."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        calls = _case_calls() + _module_calls()
        seeds = range(4)
        serial = _run_all(calls, seeds)
        for r in _run_from_threads(calls, seeds, repeats=3, intra_op_threads=threads):
            # Same thread count, so even the reductions add in the same order: bitwise equal.
            _assert_same(serial, r, exact=True)
    finally:
        torch.set_num_threads(previous)


def test_thread_counts_agree():
    """1 and 2 intra-op threads: the same results up to the summation order of the weight gradients."""
    previous = torch.get_num_threads()
    try:
        out = {}
        for threads in _THREAD_COUNTS:
            torch.set_num_threads(threads)
            out[threads] = _run_all(_case_calls() + _module_calls(), range(3))
        _assert_same(out[1], out[2], exact=False)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("threads", _THREAD_COUNTS)
@pytest.mark.parametrize("deterministic", [False, True])
def test_bitwise_repeatable(threads, deterministic):
    """The same call gives bitwise the same result run to run at a fixed thread count (the weight-gradient
    reductions split their work by worker index, not by scheduling), and runs under
    torch.use_deterministic_algorithms(True)."""
    previous, was_deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    try:
        calls = _case_calls() + _module_calls()
        first = _run_all(calls, range(3))
        for _ in range(3):
            _assert_same(first, _run_all(calls, range(3)), exact=True)
    finally:
        torch.set_num_threads(previous)
        torch.use_deterministic_algorithms(was_deterministic)


def _chain_of_every_op(x, dw_w, dw_b, pw_w, pw_b, ex_w, ex_b, ir_dw_w, ir_dw_b, pr_w, pr_b, pri_w, pri_b, ch_w,
                       ch_b, su_ex_w, su_ex_b, su_dw_w, su_dw_b, su_pr_w, su_pr_b):
    y = fusedops.depthwise_conv2d(x, dw_w, dw_b, 1, 1)
    y = fusedops.dwpw_conv2d(y, dw_w, dw_b, pw_w, pw_b, 1, 1, 1, "relu6", None)
    y = fusedops.inverted_residual(y, ex_w, ex_b, ir_dw_w, ir_dw_b, pr_w, pr_b, activation="relu6")
    y = fusedops.ghost_module(y, pri_w, pri_b, ch_w, ch_b, y.shape[1])
    y = fusedops.shufflenet_v2_unit(y, su_ex_w, su_ex_b, su_dw_w, su_dw_b, su_pr_w, su_pr_b)
    return fusedops.concat_shuffle(fusedops.channel_shuffle(y, 2), y, 2)


def test_compiled_calls_from_threads_match_serial_calls():
    """torch.compile(fullgraph=True) graphs of every op (forward and backward) and of frozen and unfrozen fused
    blocks, compiled once per shape, then called from 8 threads at once on different shapes: bitwise the serial
    compiled results."""
    import torch._dynamo

    torch._dynamo.reset()
    chain = torch.compile(_chain_of_every_op, fullgraph=True, dynamic=False)

    def chain_call(layout):
        def run(seed):
            g = torch.Generator().manual_seed(seed)
            c, hidden = 4, 12
            x = _leaf((2, c, 6 + seed % 3, 7), layout, g)
            ws = _weights(((c, 1, 3, 3), (c,), (c, c, 1, 1), (c,), (hidden, c, 1, 1), (hidden,), (hidden, 1, 3, 3),
                            (hidden,), (c, hidden, 1, 1), (c,), (c // 2, c, 1, 1), (c // 2,), (c // 2, 1, 3, 3),
                            (c // 2,), (c // 2, c // 2, 1, 1), (c // 2,), (c // 2, 1, 3, 3), (c // 2,),
                            (c // 2, c // 2, 1, 1), (c // 2,)), g)
            y = chain(x, *ws)
            return (y, *torch.autograd.grad(y, (x, *ws), torch.ones_like(y)))
        return run

    calls = [("chain_cl", chain_call("cl")), ("chain_nchw", chain_call("nchw"))]
    calls += [(name, fn) for name, fn in _module_calls(lambda m: torch.compile(m, fullgraph=True, dynamic=False))
              if name in ("separable", "inverted_residual_frozen", "ghost", "shufflenet_v2_unit_s2_frozen")]
    seeds = range(2)
    serial = _run_all(calls, seeds)  # compiles each shape once, before the threads start
    for r in _run_from_threads(calls, seeds, repeats=2):
        _assert_same(serial, r, exact=True)


def test_large_weight_gradient_bitwise_repeatable():
    """A weight gradient big enough to be split across threads, repeated: bitwise equal each time."""
    x = torch.randn(8, 32, 40, 40).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(32, 1, 3, 3, requires_grad=True)
    b = torch.randn(32, requires_grad=True)
    go = torch.randn(8, 32, 40, 40).contiguous(memory_format=torch.channels_last)
    first = None
    for _ in range(5):
        y = fusedops.depthwise_conv2d(x, w, b, 1, 1)
        g = torch.autograd.grad(y, (x, w, b), go)
        if first is None:
            first = g
        for a, e in zip(g, first):
            assert torch.equal(a, e)


# ---------------------------------------------------------------------------------------------------
# Serialisation


def _models():
    out = {"mobilenet_v1": fusedops.models.mobilenet_v1(width_mult=0.25, num_classes=10),
           "mobilenet_v2": fusedops.models.mobilenet_v2(width_mult=0.25, num_classes=10),
           "mobilenet_v3_small": fusedops.models.mobilenet_v3_small(width_mult=0.25, num_classes=10),
           "ghostnet": fusedops.models.ghostnet(0.25, num_classes=10)}
    for name in ("shufflenet_v2_x0_5", "shufflenet_v1"):
        if hasattr(fusedops.models, name):
            out[name] = getattr(fusedops.models, name)(num_classes=10)
    for model in out.values():
        for bn in model.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                with torch.no_grad():
                    bn.running_var.uniform_(0.5, 2.0)
                    bn.running_mean.normal_(0, 0.2)
        model.eval()
    return out


def _round_trips():
    def torch_save(m):
        buf = io.BytesIO()
        torch.save(m, buf)
        buf.seek(0)
        return torch.load(buf, weights_only=False)

    def state_dict(m):
        fresh = copy.deepcopy(m)  # same architecture ...
        for p in fresh.parameters():
            p.data.zero_()  # ... with other weights, which load_state_dict must replace
        buf = io.BytesIO()
        torch.save(m.state_dict(), buf)
        buf.seek(0)
        fresh.load_state_dict(torch.load(buf))
        return fresh

    return {"deepcopy": copy.deepcopy, "pickle": lambda m: pickle.loads(pickle.dumps(m)), "torch_save": torch_save,
            "state_dict": state_dict}


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("trip", sorted(_round_trips()))
def test_models_survive_round_trips(trip, frozen):
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    for name, model in _models().items():
        if frozen:
            fusedops.freeze(model)
        with torch.no_grad():
            expected = model(x)
            copied = _round_trips()[trip](model)
            torch.testing.assert_close(copied(x), expected, rtol=0, atol=0, msg=name)
            # The copy folds its own weights, never the original's (nor stale ones).
            for p in copied.parameters():
                if p.dim() == 4:
                    p.data.mul_(0.5)
            if frozen:
                fusedops.freeze(copied)
            changed = copied(x)
            torch.testing.assert_close(model(x), expected, rtol=0, atol=0, msg=name)
            assert not torch.equal(changed, expected), name
