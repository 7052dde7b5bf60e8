"""The CUDA emulation's own checks (FUSEDOPS_CUDA_EMU=1 only): each report of barrier misuse, warp-intrinsic
misuse, launch limits and shared-memory misuse is triggered by a tiny kernel (csrc/testing/cuda_emu/self_test.cpp)
and asserted, and the same kernel used correctly (misuse 0) must run and give CUDA's results. So a check that
stopped reporting, or reported what is not a misuse, fails here rather than letting kernel bugs through."""

import re

import pytest
import torch

from conftest import CUDA_EMULATED

pytestmark = pytest.mark.skipif(not CUDA_EMULATED, reason="tests the CUDA emulation (FUSEDOPS_CUDA_EMU=1)")

if CUDA_EMULATED:
    import cuda_emu

SCHEDULES = [("forward", 0), ("reversed", 0), ("random", 1)]
WHERE = r"self_test\.cpp:(\d+)"  # file:line of the intrinsic or barrier a report names


@pytest.fixture(autouse=True)
def _default_schedule():
    yield
    if CUDA_EMULATED:
        cuda_emu.configure()


def launch(kernel, misuse=0, grid=(1, 1, 1), block=(32, 1, 1), shared_bytes=0, out_size=None, out=None):
    """Runs a self-test kernel; returns its int64 output (one slot per thread unless out_size says more)."""
    if out is None:
        threads = grid[0] * grid[1] * grid[2] * block[0] * block[1] * block[2]
        out = torch.zeros(threads if out_size is None else out_size, dtype=torch.long)
    torch.ops.fusedops_emu.self_test(kernel, misuse, list(grid), list(block), shared_bytes, out)
    return out


# ---------------------------------------------------------------------------------------------------
# Barriers


@pytest.mark.parametrize("schedule,seed", SCHEDULES)
def test_barrier_used_correctly(schedule, seed):
    cuda_emu.configure(schedule=schedule, seed=seed)
    assert torch.equal(launch("barrier", grid=(2, 1, 1), block=(64, 1, 1)), torch.arange(64).repeat(2))


@pytest.mark.parametrize("schedule,seed", SCHEDULES)
def test_threads_at_different_barriers(schedule, seed):
    cuda_emu.configure(schedule=schedule, seed=seed)
    pattern = (r"threads of one block wait at different barriers: thread \((\d+), 0, 0\) at .*" + WHERE
               + r", thread \((\d+), 0, 0\) at .*" + WHERE + r" \[block \(0, 0, 0\)\]")
    with pytest.raises(RuntimeError, match=pattern) as e:
        launch("barrier", misuse=1, block=(64, 1, 1))
    first, first_line, second, second_line = (int(v) for v in re.search(pattern, str(e.value)).groups())
    assert first_line != second_line
    assert (int(first) >= 32) != (int(second) >= 32), "the two threads must come from the two halves"


@pytest.mark.parametrize("schedule,seed", SCHEDULES)
def test_barrier_after_threads_exited(schedule, seed):
    cuda_emu.configure(schedule=schedule, seed=seed)
    with pytest.raises(RuntimeError, match=r"__syncthreads\(\) at .*" + WHERE + r" reached by 32 threads after 32 "
                       r"threads of the block exited \[block \(0, 0, 0\)\]"):
        launch("barrier", misuse=2, block=(64, 1, 1))


@pytest.mark.parametrize("misuse", [1, 2], ids=["lanes_exited", "lanes_at_a_barrier"])
@pytest.mark.parametrize("schedule,seed", SCHEDULES)
def test_warp_deadlock(misuse, schedule, seed):
    cuda_emu.configure(schedule=schedule, seed=seed)
    assert torch.equal(launch("warp_deadlock", block=(64, 1, 1)), torch.arange(64))
    lanes = ",".join(str(lane) for lane in range(16, 32))
    with pytest.raises(RuntimeError, match=r"deadlock: __syncwarp at .*" + WHERE + r" in warp [01] waits for lanes "
                       + lanes + r" of mask 0xffffffff, which exited or wait elsewhere \[block \(0, 0, 0\)\]"):
        launch("warp_deadlock", misuse=misuse, block=(64, 1, 1))


def test_launch_after_a_failed_one():
    # A launch abandoned at a misuse leaves its threads' fibers mid-kernel; the next launch must start clean.
    for misuse in (1, 2):
        with pytest.raises(RuntimeError):
            launch("barrier", misuse=misuse, block=(64, 1, 1))
        assert torch.equal(launch("barrier", block=(64, 1, 1)), torch.arange(64))


# ---------------------------------------------------------------------------------------------------
# Warp intrinsics


def _expected_warp_ops(threads):
    rows = []
    for t in range(threads):
        lane, base, v = t % 32, t - t % 32, 1000 + t
        rows.append([
            1000 + base + 3,                                     # __shfl_sync(lane 3)
            v - 2 if lane >= 2 else v,                           # __shfl_up_sync(2)
            v + 5 if lane + 5 < 32 else v,                       # __shfl_down_sync(5)
            1000 + base + (lane ^ 6),                            # __shfl_xor_sync(6)
            v + 3 if lane % 8 + 3 < 8 else v,                    # __shfl_down_sync(3, width 8)
            1000 + base + (lane & 16) + 9,                       # __shfl_sync(lane 9, width 16)
            sum(1 << lane for lane in range(0, 32, 3)),          # __ballot_sync(lane % 3 == 0)
            1,                                                   # __any_sync(lane == 5)
            0,                                                   # __all_sync(lane < 31)
            1,                                                   # __all_sync(true)
            1000 + (t ^ 1),                                      # __shfl_xor_sync(1) within half-warp masks
        ])
    return torch.tensor(rows)


@pytest.mark.parametrize("schedule,seed", SCHEDULES)
def test_warp_intrinsics_results(schedule, seed):
    cuda_emu.configure(schedule=schedule, seed=seed)
    out = launch("warp_ops", block=(64, 1, 1), out_size=64 * 11)
    assert torch.equal(out.view(64, 11), _expected_warp_ops(64))


@pytest.mark.parametrize("threads", [32, 16])
def test_warp_intrinsic_used_correctly(threads):
    assert torch.equal(launch("warp_misuse", block=(threads, 1, 1)), 1000 + (torch.arange(threads) ^ 1))


@pytest.mark.parametrize("misuse,threads,message", [
    (1, 32, r"__shfl_sync at .*" + WHERE + r": the calling lane 0 is not in its mask"),
    (2, 32, r"__shfl_down_sync at .*" + WHERE + r": lane 8 reads lane 16, outside the mask"),
    (3, 32, r"__shfl_sync at .*" + WHERE + r": width 12 is not a power of 2 up to 32"),
    (4, 16, r"__shfl_xor_sync at .*" + WHERE + r": the mask names lanes " + ",".join(map(str, range(16, 32)))
     + r" that the block lacks"),
    (5, 32, r"__syncwarp at .*" + WHERE + r": mask overlaps the mask of __syncwarp at .*" + WHERE
     + r" that other lanes wait at"),
    (6, 32, r"__shfl_xor_sync at .*" + WHERE + r": other lanes of the mask wait at __shfl_xor_sync at .*" + WHERE),
], ids=["lane_not_in_mask", "reads_outside_mask", "width", "lanes_the_block_lacks", "overlapping_masks",
        "different_shuffles"])
def test_warp_intrinsic_misuse(misuse, threads, message):
    with pytest.raises(RuntimeError, match=message + r" \[block \(0, 0, 0\), thread \(\d+, 0, 0\)\]"):
        launch("warp_misuse", misuse=misuse, block=(threads, 1, 1))


# ---------------------------------------------------------------------------------------------------
# Launch limits


@pytest.mark.parametrize("block", [(1024, 1, 1), (32, 2, 16), (1, 1, 64)])
def test_launch_limits_allow(block):
    threads = block[0] * block[1] * block[2]
    assert torch.equal(launch("barrier", block=block), torch.arange(threads))


@pytest.mark.parametrize("grid,block,message", [
    ((1, 1, 1), (1025, 1, 1), "invalid block 1025x1x1"),
    ((1, 1, 1), (64, 32, 1), "invalid block 64x32x1"),
    ((1, 1, 1), (1, 1, 65), "invalid block 1x1x65"),
    ((1, 65536, 1), (1, 1, 1), "invalid grid 1x65536x1"),
    ((0, 1, 1), (1, 1, 1), "invalid grid 0x1x1"),
])
def test_launch_limits_refuse(grid, block, message):
    with pytest.raises(RuntimeError, match=r"fusedops_emu: launch at .*self_test\.cpp:\d+: " + message):
        launch("barrier", grid=grid, block=block, out_size=1)


def test_dynamic_shared_memory_limit_without_opt_in():
    limit = 48 * 1024
    out = torch.zeros(1 + 48 + limit, dtype=torch.long)
    out[0] = limit
    launch("shared", block=(1, 1, 1), shared_bytes=limit, out=out)
    assert (out[1:] == 0xFF).all()
    with pytest.raises(RuntimeError, match=r"49153 bytes of dynamic shared memory exceed the 48 KiB available "
                       r"without opt-in"):
        launch("shared", block=(1, 1, 1), shared_bytes=limit + 1, out_size=1)


# ---------------------------------------------------------------------------------------------------
# Shared memory


def test_poison_bytes_are_nan_in_every_float_type():
    poison = torch.full((8,), 0xFF, dtype=torch.uint8)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        assert poison.view(dtype).isnan().all(), dtype


@pytest.mark.parametrize("schedule,seed", SCHEDULES)
def test_shared_memory_poisoned_before_every_block(schedule, seed):
    # Each block reads its static and dynamic shared memory before writing its index over it: every block of
    # both launches must find the poison, never zeros or an earlier block's (or launch's) index.
    cuda_emu.configure(schedule=schedule, seed=seed)
    dynamic, blocks = 40, 3
    for _ in range(2):
        out = torch.zeros(1 + blocks * (48 + dynamic), dtype=torch.long)
        out[0] = dynamic
        launch("shared", grid=(blocks, 1, 1), block=(4, 1, 1), shared_bytes=dynamic, out=out)
        assert (out[1:] == 0xFF).all(), out[1:].view(blocks, -1)


def test_write_past_dynamic_shared_memory():
    out = torch.zeros(1 + 2 * (48 + 40), dtype=torch.long)
    out[0] = 40
    with pytest.raises(RuntimeError, match=r"write past the end of the 40 bytes of dynamic shared memory "
                       r"\[block \(0, 0, 0\)\]"):
        launch("shared", misuse=1, grid=(2, 1, 1), block=(4, 1, 1), shared_bytes=40, out=out)


# ---------------------------------------------------------------------------------------------------
# Schedules


def _order(schedule, seed, blocks=3, threads=4):
    cuda_emu.configure(schedule=schedule, seed=seed)
    out = launch("order", grid=(blocks, 1, 1), block=(threads, 1, 1), out_size=1 + 2 * blocks * threads)
    assert out[0] == 2 * blocks * threads
    return out[1:].view(blocks, 2, threads)  # per block as run: the threads before and after the barrier


def test_schedules_order_threads_and_blocks():
    forward = torch.arange(12).view(3, 1, 4).expand(3, 2, 4)
    assert torch.equal(_order("forward", 0), forward)
    assert torch.equal(_order("reversed", 0), forward.flip(0).flip(2))
    random = _order("random", 1)
    assert torch.equal(random, _order("random", 1)), "a seed must give the same order again"
    assert not torch.equal(random, _order("random", 2))
    assert not torch.equal(random, forward)
    # Blocks run whole, one at a time, and the threads are reshuffled at every synchronisation.
    for block in random:
        first = block.min().item()
        assert first % 4 == 0 and torch.equal(block.sort(dim=1).values, (first + torch.arange(4)).expand(2, 4))
    assert not torch.equal(random[:, 0], random[:, 1])
