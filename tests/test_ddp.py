"""A converted model trained under DistributedDataParallel (gloo, 2 processes on CPU) ends with the parameters of
one process trained on the same global batch.

Two settings of the batch norms, each with its own reference:

* eval mode (frozen statistics, as in fine-tuning): the converted blocks run the fused kernels with their batch
  norms folded, forward and backward. The loss is a mean over independent images, so the first step ends where one
  process's step on the whole global batch at once ends. Over the following steps the two sum each gradient in
  another order, and a rounding apart can grow as far as the network is ill-conditioned: on a 2-vCPU AMD EPYC
  (AVX2), weights 1e-6 apart after two steps gave float64 gradients 7% apart at the third (a ReLU6 network's
  gradient jumps where an activation crosses 0 or 6; the fused kernels' gradients were within 1e-6 of float64's on
  either side). So the steps after the first are compared with the reference of the shares below, which sums in
  DDP's order.
* train mode: each rank normalises with its own share's batch statistics (plain BatchNorm under DDP). The reference
  runs each rank's share through its own forward and averages the gradients as DDP does; it keeps the running
  statistics only of rank 0's share, the ones DDP broadcasts to every rank at each forward. That the whole batch in
  one forward ends elsewhere is checked too: the comparison can tell the two apart.
"""

import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
import torchvision
from torch.nn.parallel import DistributedDataParallel

import fusedops
from conftest import TRITON_DEVICE, requires_triton

WORLD_SIZE = 2
STEPS = 3
GLOBAL_BATCH = 8
SHARE = GLOBAL_BATCH // WORLD_SIZE
# 64x64: the network ends at 2x2, where the train-mode batch norms see 16 values per channel and rank. At 32x32 (1x1,
# 4 values) their backward is ill-conditioned: weights move by up to 10 in three steps.
IMAGE_SIZE = 64
MODES = ("eval", "train")
# fp32: one forward of the whole batch sums its gradient in another order than the mean of the ranks' (measured:
# 2e-6 relative after a step; against the reference of the shares, one thread as each rank, the two are equal).
TOLERANCE = dict(rtol=1e-5, atol=1e-6)

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")


def _mobilenet_v2():
    # No dropout: its masks come from each process's random state, which no layout of processes reproduces.
    return torchvision.models.mobilenet_v2(width_mult=0.25, num_classes=10, dropout=0.0)


def _initial_state():
    """A converted mobilenet_v2(width_mult=0.25)'s state with running statistics measured on images (as a trained
    model has): frozen in eval mode, they keep activations and gradients at a healthy scale through the random
    network (the initial ones let the gradients vanish). Made once, in the test's process, and handed to the ranks:
    the measured statistics depend on the number of threads."""
    torch.manual_seed(0)
    model = _mobilenet_v2()
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in batch_norms:
        bn.momentum = None  # a plain average over the calibration batch
    with torch.no_grad():
        model(torch.randn(2 * GLOBAL_BATCH, 3, IMAGE_SIZE, IMAGE_SIZE))
    for bn in batch_norms:
        bn.momentum = 0.1
    return fusedops.convert(model).state_dict()


def _converted_model(state, mode):
    model = fusedops.convert(_mobilenet_v2())
    model.load_state_dict(state)
    return model.train(mode == "train")


def _batches():
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(STEPS, GLOBAL_BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    return images, torch.randint(10, (STEPS, GLOBAL_BATCH), generator=generator)


def _channels_last(images):
    return images.contiguous(memory_format=torch.channels_last)


def _optimizer(model):
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def _train_ddp(rank, state, rendezvous, results):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD_SIZE)
    images, labels = _batches()
    share = slice(rank * SHARE, (rank + 1) * SHARE)
    for mode in MODES:
        model = _converted_model(state, mode)
        ddp = DistributedDataParallel(model)
        optimizer = _optimizer(ddp)
        for step in range(STEPS):
            optimizer.zero_grad()
            F.cross_entropy(ddp(_channels_last(images[step, share])), labels[step, share]).backward()
            optimizer.step()
            if step in (0, STEPS - 1):
                torch.save(model.state_dict(), f"{results}/{mode}_rank{rank}_step{step}.pt")
    dist.destroy_process_group()


def _train_one_process(state, mode, per_rank_statistics, steps=STEPS):
    """The reference: one process, one thread as each rank, on the global batch; with `per_rank_statistics`, each
    rank's share through its own forward (the running statistics of rank 0's share kept), the gradients averaged
    over the shares."""
    model = _converted_model(state, mode)
    optimizer = _optimizer(model)
    images, labels = _batches()
    for step in range(steps):
        optimizer.zero_grad()
        if not per_rank_statistics:
            F.cross_entropy(model(_channels_last(images[step])), labels[step]).backward()
        else:
            for rank in range(WORLD_SIZE):
                rank0_buffers = copy.deepcopy(model.state_dict()) if rank else None
                share = slice(rank * SHARE, (rank + 1) * SHARE)
                loss = F.cross_entropy(model(_channels_last(images[step, share])), labels[step, share])
                (loss / WORLD_SIZE).backward()
                if rank0_buffers is not None:
                    for name, buffer in model.named_buffers():
                        buffer.copy_(rank0_buffers[name])
        optimizer.step()
    return model.state_dict()


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def initial_state(one_thread):
    return _initial_state()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory, initial_state):
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(_train_ddp, args=(initial_state, str(folder / "rendezvous"), str(folder)), nprocs=WORLD_SIZE, join=True)
    return {(mode, rank, step): torch.load(folder / f"{mode}_rank{rank}_step{step}.pt")
            for mode in MODES for rank in range(WORLD_SIZE) for step in (0, STEPS - 1)}


def _assert_states_close(ours, theirs, names):
    for name in names:
        torch.testing.assert_close(ours[name], theirs[name], **TOLERANCE, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("mode", MODES)
def test_ddp_matches_one_process_on_the_global_batch(ddp_results, initial_state, mode):
    initial = _converted_model(initial_state, mode)
    parameters = [name for name, _ in initial.named_parameters()]
    buffers = [name for name, _ in initial.named_buffers()]
    if mode == "eval":
        # one step of DDP is one step on the whole batch
        whole_batch = _train_one_process(initial_state, mode, per_rank_statistics=False, steps=1)
        for rank in range(WORLD_SIZE):
            _assert_states_close(ddp_results[mode, rank, 0], whole_batch, parameters + buffers)
    reference = _train_one_process(initial_state, mode, per_rank_statistics=True)
    for rank in range(WORLD_SIZE):
        _assert_states_close(ddp_results[mode, rank, STEPS - 1], reference, parameters)
    # rank 0's running statistics are the ones DDP broadcasts; frozen ones (eval) must not have moved at all
    _assert_states_close(ddp_results[mode, 0, STEPS - 1], reference, buffers)
    # the steps moved every convolution's weights, the fused blocks' included, far beyond the tolerance
    start = initial.state_dict()
    convolutions = [name for name in parameters if start[name].dim() == 4]
    assert len(convolutions) == 52 and all((reference[n] - start[n]).abs().max() > 1e-4 for n in convolutions)


def test_per_rank_statistics_make_a_difference(ddp_results, initial_state):
    """Train-mode batch norm under DDP is not one process on the whole batch: the reference above has to model it,
    and the comparison is fine enough to see the difference."""
    whole_batch = _train_one_process(initial_state, "train", per_rank_statistics=False)
    name = "classifier.1.weight"
    assert not torch.allclose(ddp_results["train", 0, STEPS - 1][name], whole_batch[name], **TOLERANCE)


_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def _stride_mismatches(model, x):
    """The parameters whose gradient has other strides than the parameter after a backward on `x`."""
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    return {name for name, p in model.named_parameters() if p.grad.stride() != p.stride()}


@pytest.mark.parametrize("model_format, input_format", [("contiguous", "contiguous"), ("contiguous", "channels_last"),
                                                        ("channels_last", "channels_last")])
def test_gradients_have_their_parameters_strides(model_format, input_format):
    """Converting a model gives no gradient other strides than its parameter, the strides of size-1 dimensions
    included (a depthwise weight's (C, 1, kH, kW) and a 1x1 weight's (O, I, 1, 1) lay out the same elements either
    way, and PyTorch's gradient layout contract ignores those strides): DDP compares all of them with its bucket
    views and otherwise warns "Grad strides do not match bucket view strides" and copies each gradient. (A
    channels_last model fed contiguous images is left out: there PyTorch's convolution of a converted block's folded
    1x1 weight gives a contiguous gradient, which the fold's product passes on to the channels_last weight.)"""
    torch.manual_seed(0)
    original = _mobilenet_v2().eval().to(memory_format=_FORMATS[model_format])
    converted = fusedops.convert(copy.deepcopy(original)).eval().to(memory_format=_FORMATS[model_format])
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=_FORMATS[input_format])
    assert _stride_mismatches(converted, x) <= _stride_mismatches(original, x)


def _check_op_gradient_strides(weight_format, input_format, device):
    torch.manual_seed(0)
    fmt = _FORMATS[weight_format]

    def leaf(*shape, memory_format=fmt):
        return torch.randn(*shape).contiguous(memory_format=memory_format).to(device).requires_grad_()

    x = leaf(2, 8, 10, 10, memory_format=_FORMATS[input_format])
    dw, pw, expand, project = leaf(8, 1, 3, 3), leaf(16, 8, 1, 1), leaf(8, 8, 1, 1), leaf(8, 8, 1, 1)
    # The stride-1 ShuffleNetV2 unit's branch (on the input's 4 last channels) and the down-sampling unit's shortcut.
    unit_expand, unit_dw, unit_project = leaf(4, 4, 1, 1), leaf(4, 1, 3, 3), leaf(4, 4, 1, 1)
    shortcut_dw, shortcut_pw = leaf(8, 1, 3, 3), leaf(8, 8, 1, 1)
    calls = {
        "depthwise_conv2d": (lambda: fusedops.depthwise_conv2d(x, dw, padding=1), [dw]),
        "dwpw_conv2d": (lambda: fusedops.dwpw_conv2d(x, dw, None, pw, None, padding=1), [dw, pw]),
        "inverted_residual": (lambda: fusedops.inverted_residual(x, expand, None, dw, None, project),
                              [expand, dw, project]),
        "ghost_module": (lambda: fusedops.ghost_module(x, expand, None, dw, None, 16), [expand, dw]),
        "shufflenet_v2_unit": (lambda: fusedops.shufflenet_v2_unit(x, unit_expand, None, unit_dw, None, unit_project),
                               [unit_expand, unit_dw, unit_project]),
        "shufflenet_v2_unit_down": (lambda: fusedops.shufflenet_v2_unit(x, expand, None, dw, None, project,
                                                                        shortcut=(shortcut_dw, None, shortcut_pw, None),
                                                                        stride=2),
                                    [expand, dw, project, shortcut_dw, shortcut_pw]),
    }
    for name, (call, weights) in calls.items():
        grads = torch.autograd.grad(call().sum(), weights)
        for weight, grad in zip(weights, grads):
            assert grad.stride() == weight.stride(), (name, tuple(weight.shape))


@pytest.mark.parametrize("weight_format", list(_FORMATS))
@pytest.mark.parametrize("input_format", list(_FORMATS))
def test_fused_ops_gradients_have_their_weights_strides(weight_format, input_format):
    """The same for each op on its own."""
    _check_op_gradient_strides(weight_format, input_format, "cpu")


@pytest.mark.triton
@requires_triton
@pytest.mark.parametrize("weight_format", list(_FORMATS))
@pytest.mark.parametrize("input_format", list(_FORMATS))
def test_triton_fused_ops_gradients_have_their_weights_strides(weight_format, input_format):
    with fusedops.use_backend("triton"):
        _check_op_gradient_strides(weight_format, input_format, TRITON_DEVICE)
