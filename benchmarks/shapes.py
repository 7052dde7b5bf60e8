"""Layer shapes of the reference networks, shared by the op benchmarks."""

# MobileNetV2's depthwise layers (C, H, stride, kernel) plus the 5x5 / 7x7 layers of MobileNetV3 /
# MnasNet-style nets at C=240, 14x14; each at batch 1 and 8.
DEPTHWISE_MOBILENET = [
    dict(C=32, H=112, stride=1, k=3),
    dict(C=96, H=112, stride=2, k=3),
    dict(C=144, H=56, stride=1, k=3),
    dict(C=192, H=28, stride=1, k=3),
    dict(C=384, H=14, stride=1, k=3),
    dict(C=576, H=14, stride=1, k=3),
    dict(C=960, H=7, stride=1, k=3),
    dict(C=240, H=14, stride=1, k=5),
    dict(C=240, H=14, stride=1, k=7),
]
BATCHES = [1, 8]

# ShuffleNetV2 unit tensors: (2C total channels, H) at widths 1.0x and 0.5x.
SHUFFLENET_V2 = [
    dict(C=116, H=28), dict(C=232, H=14), dict(C=464, H=7),
    dict(C=48, H=28), dict(C=96, H=14), dict(C=192, H=7),
]

# ShuffleNetV2 1.0x's units at 224x224 in network order (input -> output channels, input H, depthwise 3x3 stride):
# each stage's down-sampling unit, then its stride-1 units (C == C_out, the branch on the second half).
SHUFFLENET_V2_UNIT = [
    dict(C=24, Cout=116, H=56, stride=2), dict(C=116, Cout=116, H=28, stride=1),
    dict(C=116, Cout=232, H=28, stride=2), dict(C=232, Cout=232, H=14, stride=1),
    dict(C=232, Cout=464, H=14, stride=2), dict(C=464, Cout=464, H=7, stride=1),
]

# Depthwise-separable blocks (C -> C_out, input H, depthwise 3x3 stride): MobileNetV1 / V2 layers.
DWPW = [
    dict(C=32, Cout=64, H=112, stride=1),
    dict(C=64, Cout=128, H=56, stride=2),
    dict(C=128, Cout=128, H=56, stride=1),
    dict(C=144, Cout=24, H=56, stride=1),
    dict(C=384, Cout=64, H=14, stride=1),
    dict(C=512, Cout=512, H=14, stride=1),
    dict(C=960, Cout=160, H=7, stride=1),
    dict(C=1024, Cout=1024, H=7, stride=1),
]

# MobileNetV2 inverted-residual blocks (C_in -> C_out, input H, expand ratio, depthwise 3x3 stride): the expand-6
# stride-1 blocks of perf_baseline table 4c (C_in == C_out, with the residual), the first (expand 1) block and
# the stride-2 blocks that open stages.
INVERTED_RESIDUAL = [
    dict(C=32, Cout=16, H=112, t=1, stride=1),
    dict(C=16, Cout=24, H=112, t=6, stride=2),
    dict(C=24, Cout=24, H=56, t=6, stride=1),
    dict(C=24, Cout=32, H=56, t=6, stride=2),
    dict(C=32, Cout=32, H=28, t=6, stride=1),
    dict(C=64, Cout=96, H=14, t=6, stride=1),
    dict(C=96, Cout=96, H=14, t=6, stride=1),
    dict(C=96, Cout=160, H=14, t=6, stride=2),
    dict(C=160, Cout=160, H=7, t=6, stride=1),
    dict(C=160, Cout=320, H=7, t=6, stride=1),
]

# The squeeze-excitation blocks of torchvision's mobilenet_v3_large at 224x224 (input channels, kernel, expanded,
# output channels, activation, stride, input size), plus mobilenet_v3_small's first block (no expansion, 112x112).
# timm GhostModule shapes of GhostNet (perf_baseline table 4e): in -> out channels at H x H, ratio 2, 3x3 cheap
# operation, ReLU.
GHOST_MODULE = [
    dict(C=24, Cout=72, H=56),
    dict(C=40, Cout=120, H=28),
    dict(C=80, Cout=240, H=14),
    dict(C=160, Cout=960, H=7),
]

INVERTED_RESIDUAL_SE = [
    dict(C=16, k=3, E=16, Cout=16, act="RE", stride=2, H=112),
    dict(C=24, k=5, E=72, Cout=40, act="RE", stride=2, H=56),
    dict(C=40, k=5, E=120, Cout=40, act="RE", stride=1, H=28),
    dict(C=80, k=3, E=480, Cout=112, act="HS", stride=1, H=14),
    dict(C=112, k=5, E=672, Cout=160, act="HS", stride=2, H=14),
    dict(C=160, k=5, E=960, Cout=160, act="HS", stride=1, H=7),
]
