"""Mutation check of the CUDA emulation: shows that the emulated test suite catches typical kernel bugs.

Each mutation alters a copy of the CUDA sources (csrc/cuda/*.cu and csrc/include/fusedops/cuda/), builds it
into an emulated library of its own (FUSEDOPS_CUDA_EMU_TREE) and runs the emulated tests that cover the
altered code, which must fail. Run from the repository root with fusedops built:

    python tests/cuda_emu_mutations.py        (make test-cuda-emu-mutations)

It prints, per mutation, whether the tests caught it and the first error they reported, and exits non-zero
if any mutation went unnoticed.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TREE = os.path.join(ROOT, "build", "cuda_emu_mutant_tree")
SOURCES = {"cuda": os.path.join(ROOT, "csrc", "cuda"),
           os.path.join("include", "fusedops", "cuda"): os.path.join(ROOT, "csrc", "include", "fusedops", "cuda")}

# (what, file in the tree, original text, mutated text, pytest arguments that must fail)
MUTATIONS = [
    ("missing __syncthreads() after the tile loads of the dwpw forward kernel",
     "cuda/dwpw_conv2d.cu",
     "    __syncthreads();\n    // 3. The pointwise GEMM of the chunk.",
     "    // 3. The pointwise GEMM of the chunk.",
     ["tests/test_cuda_dwpw_conv2d.py", "-k", "float32"]),
    ("missing __syncthreads() inside the block reduction (block_sum_n), between reading and rewriting smem",
     "include/fusedops/cuda/reduce.cuh",
     "    for (int w = 0; w < warps; ++w) total += smem[tid * warps + w];\n  __syncthreads();\n",
     "    for (int w = 0; w < warps; ++w) total += smem[tid * warps + w];\n",
     ["tests/test_cuda_emulated.py", "-k", "weight_gradient_split and nchw and float32"]),
    ("warp-shuffle mask narrowed to the lower half-warp (warp_sum)",
     "include/fusedops/cuda/reduce.cuh",
     "__shfl_down_sync(0xffffffffu, v, offset)",
     "__shfl_down_sync(0x0000ffffu, v, offset)",
     ["tests/test_cuda_depthwise_conv2d.py", "-k", "test_backward_output_mask"]),
    ("store shifted one column to the right (NCHW tile kernel)",
     "cuda/depthwise_conv2d.cu",
     "if (oh < p.out_h) dst[oh * p.out_w] = static_cast<scalar_t>(sum[r]);",
     "if (oh < p.out_h) dst[oh * p.out_w + 1] = static_cast<scalar_t>(sum[r]);",
     ["tests/test_cuda_depthwise_conv2d.py", "-k", "test_float32_special_shapes"]),
    ("one element of the dwpw depthwise tile never written",
     "cuda/dwpw_conv2d.cu",
     "      a_tile[pi][ki] = v;",
     "      if (e != kTileP * kTileK - 1) a_tile[pi][ki] = v;",
     ["tests/test_cuda_dwpw_conv2d.py", "-k", "float32"]),
    ("missing __syncthreads() between the Ghost module kernel's primary window and its cheap stage",
     "cuda/ghost_module.cu",
     "  __syncthreads();\n\n  // 3. The cheap channels",
     "\n  // 3. The cheap channels",
     ["tests/test_cuda_ghost_module.py", "-k", "fused_forward_parity and float32"]),
    ("the Ghost module kernel's tiles one column too wide (their last column overlaps the next tile's halo)",
     "cuda/ghost_module.cu",
     "p.tile_w = win_w - 2 * p.pad_w;",
     "p.tile_w = win_w - 2 * p.pad_w + 1;",
     ["tests/test_cuda_ghost_module.py", "-k", "fused_forward_parity and float32"]),
]


def _write_if_changed(path, text):
    # Unchanged files keep their time stamps, so each build recompiles only what a mutation touched.
    if os.path.exists(path):
        with open(path) as f:
            if f.read() == text:
                return
    with open(path, "w") as f:
        f.write(text)


def _original(rel):
    for tree_dir, src_dir in SOURCES.items():
        if rel.startswith(tree_dir + "/"):
            with open(os.path.join(src_dir, os.path.relpath(rel, tree_dir))) as f:
                return f.read()
    raise KeyError(rel)


def _restore():
    for tree_dir, src_dir in SOURCES.items():
        os.makedirs(os.path.join(TREE, tree_dir), exist_ok=True)
        for name in os.listdir(src_dir):
            with open(os.path.join(src_dir, name)) as f:
                _write_if_changed(os.path.join(TREE, tree_dir, name), f.read())


def main():
    env = dict(os.environ, FUSEDOPS_CUDA_EMU="1", FUSEDOPS_CUDA_EMU_TREE=TREE, TRITON_INTERPRET="1")
    missed = []
    for what, rel, old, new, args in MUTATIONS:
        _restore()
        text = _original(rel)
        assert text.count(old) == 1, f"mutation site not found (or not unique) in {rel}: {old!r}"
        _write_if_changed(os.path.join(TREE, rel), text.replace(old, new))
        run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *args],
                             cwd=ROOT, env=env, capture_output=True, text=True)
        caught = run.returncode == 1
        first = next((line[2:].strip() for line in run.stdout.splitlines() if line.startswith("E ")), "")
        if run.returncode not in (0, 1):
            first = f"pytest exited with {run.returncode}: " + (run.stdout + run.stderr)[-2000:]
            caught = False
        print(f"{'CAUGHT' if caught else 'MISSED'}: {what}\n    by: {' '.join(args)}\n    first error: {first[:300]}",
              flush=True)
        if not caught:
            missed.append(what)
    _restore()
    if missed:
        sys.exit(f"{len(missed)} mutation(s) not caught: {missed}")


if __name__ == "__main__":
    main()
