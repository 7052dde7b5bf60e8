"""fusedops.inverted_residual: MobileNetV2's inverted-residual block as one op, batch norms folded.

This version runs the pure-PyTorch reference (fusedops/ops/_reference.py) behind the op's public signature and
argument normalisation, so that :class:`fusedops.nn.InvertedResidual` and the MobileNetV2 model are written
against the final call; the native kernels replace its body without changing callers.
"""

from . import _args, _reference
from .activations import activation_name


def inverted_residual(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias=None,
                      stride=1, padding=None, dilation=1, activation="relu6", se=None, residual=None):
    r"""MobileNetV2's inverted-residual block with eval-mode batch norms folded into the weights
    (:func:`fusedops.fuse_bn`):

    ``x = act(conv1x1(input, expand_weight, expand_bias))`` (skipped when ``expand_weight`` is ``None``),
    ``x = act(depthwise_conv2d(x, dw_weight, dw_bias, stride, padding, dilation))``,
    ``out = conv1x1(x, project_weight, project_bias)`` (linear), plus ``input`` when ``residual``.

    Args:
        input: ``Tensor[N, C_in, H, W]``.
        expand_weight: ``Tensor[C_hid, C_in, 1, 1]`` or ``None`` (no expansion: ``C_hid == C_in``).
        expand_bias: optional ``Tensor[C_hid]``.
        dw_weight: ``Tensor[C_hid, 1, kH, kW]``.
        dw_bias: optional ``Tensor[C_hid]``.
        project_weight: ``Tensor[C_out, C_hid, 1, 1]``.
        project_bias: optional ``Tensor[C_out]``.
        stride, dilation: of the depthwise stage, int or (int, int).
        padding: of the depthwise stage; default ``dilation * (k - 1) // 2`` per dimension.
        activation: ``None``, ``"relu"``, ``"relu6"`` or ``"hardswish"``, after the expansion and the depthwise
            stage.
        se: squeeze-and-excitation after the depthwise stage; not supported yet (must be ``None``).
        residual: add ``input`` to the output; default ``stride == 1 and C_in == C_out``.

    Returns:
        ``Tensor[N, C_out, H_out, W_out]``.
    """
    _args.check_tensor(input, "input", rank=4)
    if expand_weight is not None:
        _args.check_tensor(expand_weight, "expand_weight", rank=4)
    _args.check_tensor(dw_weight, "dw_weight", rank=4)
    _args.check_tensor(project_weight, "project_weight", rank=4)
    for t, name in ((expand_bias, "expand_bias"), (dw_bias, "dw_bias"), (project_bias, "project_bias")):
        if t is not None:
            _args.check_tensor(t, name, rank=1)
    if se is not None:
        raise NotImplementedError("fusedops: inverted_residual does not support se yet; pass se=None")
    stride = _args.pair(stride, "stride")
    dilation = _args.pair(dilation, "dilation")
    if padding is None:
        kh, kw = dw_weight.shape[-2:]
        padding = (dilation[0] * (kh - 1) // 2, dilation[1] * (kw - 1) // 2)
    else:
        padding = _args.pair(padding, "padding")
    act = activation_name(activation, "activation")
    if residual is None:
        residual = stride == (1, 1) and input.shape[1] == project_weight.shape[0]
    return _reference.inverted_residual(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight,
                                        project_bias, stride, padding, dilation, act, bool(residual))
