"""Every argument check of every op says the same thing in C++ and in Python.

The native ops check their arguments in C++ (csrc/shared/conv_geometry.cpp, csrc/shared/dwpw.cpp,
csrc/include/fusedops/shuffle_geometry.h); fusedops/ops/_geometry.py is the Python copy, run by the fake kernels
(meta tensors, tracing) and by the Triton launchers. Each bad call below runs on CPU tensors (the C++ checks), on
meta tensors (the fake kernel) and, where the Triton interpreter is on, through the Triton mirror op: all must
fail with the same message (an internal op without a mirror: through its Triton launcher). Cases with two faults
pin the order of the checks.
"""

import importlib

import pytest
import torch

from fusedops import _extension

pytestmark = pytest.mark.skipif(not _extension.has_ops(), reason="the fusedops._C extension is not built")

ONE, ZERO = [1, 1], [0, 0]


def _x(*shape, dtype=torch.float32):
    return torch.ones(shape, dtype=dtype)


def _depthwise_cases():
    x, w, b = _x(2, 4, 6, 6), _x(4, 1, 3, 3), _x(4)

    def call(**changes):
        args = dict(input=x, weight=w, bias=None, stride=ONE, padding=ZERO, dilation=ONE)
        args.update(changes)
        return tuple(args.values())

    return [
        ("input-rank3", call(input=x[0])),
        ("weight-rank3", call(weight=w[:, 0])),
        ("input-int", call(input=x.int(), weight=w.int())),
        ("weight-dtype", call(weight=w.double())),
        ("stride-len3", call(stride=[1, 1, 1])),
        ("padding-len1", call(padding=[0])),
        ("dilation-len3", call(dilation=[1, 1, 1])),
        ("stride-0", call(stride=[1, 0])),
        ("stride-neg", call(stride=[-1, 1])),
        ("padding-neg", call(padding=[0, -2])),
        ("dilation-0", call(dilation=[0, 1])),
        ("zero-channels", call(input=_x(2, 0, 6, 6), weight=_x(0, 1, 3, 3))),
        ("weight-dim1", call(weight=_x(8, 2, 3, 3))),
        ("channels-not-multiple", call(weight=_x(6, 1, 3, 3))),
        ("kernel-0", call(weight=_x(4, 1, 0, 3))),
        ("bias-shape", call(bias=_x(5))),
        ("bias-rank2", call(bias=_x(4, 1))),
        ("bias-dtype", call(bias=b.half())),
        ("kernel-too-tall", call(weight=_x(4, 1, 7, 3))),
        ("dilated-too-wide", call(dilation=[1, 4], padding=[0, 1])),
        ("order-bias-dtype-and-stride", call(bias=b.double(), stride=[0, 1])),
        ("order-bias-shape-and-kernel", call(bias=_x(3), weight=_x(4, 1, 9, 3))),
        ("order-stride-len-and-weight-dim1", call(stride=[1], weight=_x(4, 2, 3, 3))),
    ]


def _depthwise_backward_cases():
    x, w = _x(2, 4, 6, 6), _x(4, 1, 3, 3)
    go = _x(2, 4, 4, 4)

    def call(**changes):
        args = dict(grad_output=go, input=x, weight=w, stride=ONE, padding=ZERO, dilation=ONE,
                    output_mask=[True, True, True])
        args.update(changes)
        return tuple(args.values())

    return [
        ("input-rank3", call(input=x[0])),
        ("channels-not-multiple", call(weight=_x(6, 1, 3, 3))),
        ("padding-neg", call(padding=[-1, 0])),
        ("grad_output-dtype", call(grad_output=go.double())),
        ("grad_output-shape", call(grad_output=_x(2, 4, 6, 6))),
        ("grad_output-rank3", call(grad_output=_x(2, 4, 4))),
        ("order-grad_output-dtype-and-stride", call(grad_output=go.double(), stride=[0, 1])),
    ]


def _dwpw_cases():
    x, dw_w, dw_b, pw_w, pw_b = _x(2, 4, 6, 6), _x(8, 1, 3, 3), _x(8), _x(6, 8, 1, 1), _x(6)

    def call(**changes):
        args = dict(input=x, dw_weight=dw_w, dw_bias=dw_b, pw_weight=pw_w, pw_bias=pw_b, stride=ONE, padding=ONE,
                    dilation=ONE, mid="relu6", out="relu")
        args.update(changes)
        return tuple(args.values())

    return [
        ("input-rank3", call(input=x[0])),
        ("dw_weight-rank3", call(dw_weight=dw_w[:, 0])),
        ("input-int", call(input=x.int())),
        ("dw_weight-dtype", call(dw_weight=dw_w.double())),
        ("dw_weight-channels", call(dw_weight=_x(6, 1, 3, 3))),
        ("dw_bias-shape", call(dw_bias=_x(4))),
        ("dw_bias-dtype", call(dw_bias=dw_b.double())),
        ("stride-0", call(stride=[0, 1])),
        ("padding-neg", call(padding=[1, -1])),
        ("dilation-0", call(dilation=[1, 0])),
        ("dilated-too-big", call(padding=ZERO, dilation=[3, 1])),
        ("pw_weight-channels", call(pw_weight=_x(6, 7, 1, 1))),
        ("pw_weight-rank3", call(pw_weight=_x(6, 8, 1))),
        ("pw_weight-kernel", call(pw_weight=_x(6, 8, 3, 3))),
        ("pw_weight-no-outputs", call(pw_weight=_x(0, 8, 1, 1), pw_bias=None)),
        ("pw_weight-dtype", call(pw_weight=pw_w.double())),
        ("pw_bias-shape", call(pw_bias=_x(5))),
        ("pw_bias-dtype", call(pw_bias=pw_b.half())),
        ("mid-unknown", call(mid="gelu")),
        ("out-unknown", call(out="sigmoid")),
        ("order-mid-and-pw_bias", call(mid="gelu", pw_bias=_x(5))),
        ("order-out-and-dw_bias", call(out="gelu", dw_bias=_x(3))),
        ("order-pw_weight-and-padding", call(pw_weight=_x(6, 7, 1, 1), padding=[-1, 0])),
    ]


def _dwpw_backward_cases():
    x, dw_w, dw_b, pw_w, pw_b = _x(2, 4, 6, 6), _x(8, 1, 3, 3), _x(8), _x(6, 8, 1, 1), _x(6)
    go = _x(2, 6, 6, 6)

    def call(**changes):
        args = dict(grad_output=go, input=x, dw_weight=dw_w, dw_bias=dw_b, pw_weight=pw_w, pw_bias=pw_b,
                    stride=ONE, padding=ONE, dilation=ONE, mid="relu6", out="relu", output_mask=[True] * 5,
                    output=None)
        args.update(changes)
        return tuple(args.values())

    return [
        ("pw_weight-channels", call(pw_weight=_x(6, 7, 1, 1))),
        ("out-unknown", call(out="gelu")),
        ("grad_output-shape", call(grad_output=_x(2, 6, 5, 6))),
        ("grad_output-rank3", call(grad_output=_x(2, 6, 6))),
        ("grad_output-dtype", call(grad_output=go.double())),
        ("output-shape", call(output=_x(2, 6, 6, 5))),
        ("output-dtype", call(output=go.double())),
        ("order-grad_output-and-mid", call(grad_output=go.double(), mid="gelu")),
    ]


def _inverted_residual_args(**changes):
    x, ew, eb, dw, db, pw, pb = _x(2, 4, 6, 6), _x(12, 4, 1, 1), _x(12), _x(12, 1, 3, 3), _x(12), _x(4, 12, 1, 1), _x(4)
    args = dict(input=x, expand_weight=ew, expand_bias=eb, dw_weight=dw, dw_bias=db, project_weight=pw,
                project_bias=pb, se_reduce_weight=None, se_reduce_bias=None, se_expand_weight=None,
                se_expand_bias=None, stride=ONE, padding=ONE, dilation=ONE, activation="relu6", residual=True,
                se_activation="relu", se_gate="hardsigmoid")
    args.update(changes)
    return args


def _inverted_residual_cases():
    def call(**changes):
        return tuple(_inverted_residual_args(**changes).values())

    return [
        ("input-rank3", call(input=_x(4, 6, 6))),
        ("input-int", call(input=_x(2, 4, 6, 6).int())),
        ("zero-channels", call(input=_x(2, 0, 6, 6), expand_weight=_x(12, 0, 1, 1))),
        ("expand-bias-without-weight", call(expand_weight=None)),
        ("expand-weight-shape", call(expand_weight=_x(12, 5, 1, 1))),
        ("expand-weight-kernel", call(expand_weight=_x(12, 4, 3, 3))),
        ("expand-weight-dtype", call(expand_weight=_x(12, 4, 1, 1, dtype=torch.float64))),
        ("expand-bias-shape", call(expand_bias=_x(11))),
        ("expand-bias-dtype", call(expand_bias=_x(12, dtype=torch.float64))),
        ("expand-empty-map", call(input=_x(2, 4, 0, 6), residual=False)),
        ("dw-weight-channels", call(dw_weight=_x(8, 1, 3, 3))),
        ("dw-weight-channels-no-expand", call(expand_weight=None, expand_bias=None)),
        ("dw-weight-rank3", call(dw_weight=_x(12, 3, 3))),
        ("dw-weight-dim1", call(dw_weight=_x(12, 2, 3, 3))),
        ("dw-weight-dtype", call(dw_weight=_x(12, 1, 3, 3, dtype=torch.float64))),
        ("dw-bias-shape", call(dw_bias=_x(4))),
        ("stride-0", call(stride=[0, 1])),
        ("padding-neg", call(padding=[-1, 1])),
        ("dilation-len3", call(dilation=[1, 1, 1])),
        ("kernel-too-tall", call(dw_weight=_x(12, 1, 9, 3))),
        ("project-weight-shape", call(project_weight=_x(4, 8, 1, 1))),
        ("project-weight-dtype", call(project_weight=_x(4, 12, 1, 1, dtype=torch.float64))),
        ("project-bias-shape", call(project_bias=_x(5))),
        ("activation", call(activation="gelu")),
        ("residual-channels", call(project_weight=_x(6, 12, 1, 1), project_bias=_x(6))),
        ("residual-stride", call(stride=[2, 2])),
        ("residual-padding", call(padding=ZERO)),
        ("order-dw-dtype-and-project-shape", call(dw_weight=_x(12, 1, 3, 3, dtype=torch.float64),
                                                  project_weight=_x(4, 8, 1, 1))),
        ("order-project-and-activation", call(project_bias=_x(5), activation="gelu")),
        ("se-reduce-weight-shape", call(se_reduce_weight=_x(4, 8, 1, 1), se_expand_weight=_x(12, 4, 1, 1))),
        ("se-reduce-weight-dtype", call(se_reduce_weight=_x(4, 12, 1, 1, dtype=torch.float64),
                                        se_expand_weight=_x(12, 4, 1, 1))),
        ("se-reduce-bias-shape", call(se_reduce_weight=_x(4, 12, 1, 1), se_reduce_bias=_x(5),
                                      se_expand_weight=_x(12, 4, 1, 1))),
        ("se-expand-weight-missing", call(se_reduce_weight=_x(4, 12, 1, 1))),
        ("se-expand-weight-inputs", call(se_reduce_weight=_x(4, 12, 1, 1), se_expand_weight=_x(12, 3, 1, 1))),
        ("se-expand-weight-outputs", call(se_reduce_weight=_x(4, 12, 1, 1), se_expand_weight=_x(8, 4, 1, 1))),
        ("se-expand-bias-shape", call(se_reduce_weight=_x(4, 12, 1, 1), se_expand_weight=_x(12, 4, 1, 1),
                                      se_expand_bias=_x(4))),
        ("se-expand-weight-without-reduce", call(se_expand_weight=_x(12, 4, 1, 1))),
        ("se-bias-without-reduce", call(se_reduce_bias=_x(4))),
        ("se-empty-map", call(input=_x(2, 4, 1, 1), expand_weight=None, expand_bias=None, dw_weight=_x(4, 1, 3, 3),
                              dw_bias=None, project_weight=_x(4, 4, 1, 1), padding=ZERO, residual=False,
                              se_reduce_weight=_x(2, 4, 1, 1), se_expand_weight=_x(4, 2, 1, 1))),
        ("se-activation", call(se_activation="gelu")),
        ("se-gate", call(se_gate="tanh")),
        ("order-se-and-residual", call(se_gate="tanh", stride=[2, 2])),
    ]


def _inverted_residual_backward_cases():
    def call(grad_output=_x(2, 4, 6, 6), output_mask=(True,) * 11, **changes):
        return (grad_output, *_inverted_residual_args(**changes).values(), list(output_mask))

    return [
        ("grad-output-shape", call(grad_output=_x(2, 4, 5, 6))),
        ("grad-output-dtype", call(grad_output=_x(2, 4, 6, 6, dtype=torch.float64))),
        ("input-checked-first", call(grad_output=_x(2, 4, 5, 6), expand_weight=_x(12, 5, 1, 1))),
        ("residual", call(stride=[2, 2])),
    ]


def _ghost_module_args(**changes):
    x, pw, pb, cw, cb = _x(2, 4, 6, 6), _x(5, 4, 1, 1), _x(5), _x(10, 1, 3, 3), _x(10)
    args = dict(input=x, primary_weight=pw, primary_bias=pb, cheap_weight=cw, cheap_bias=cb, residual=None,
                out_channels=13, stride=ONE, activation="relu")
    args.update(changes)
    return args


def _ghost_module_cases():
    def call(**changes):
        return tuple(_ghost_module_args(**changes).values())

    return [
        ("input-rank3", call(input=_x(4, 6, 6))),
        ("input-int", call(input=_x(2, 4, 6, 6).int())),
        ("zero-channels", call(input=_x(2, 0, 6, 6), primary_weight=_x(5, 0, 1, 1))),
        ("primary-weight-shape", call(primary_weight=_x(5, 3, 1, 1))),
        ("primary-weight-kernel", call(primary_weight=_x(5, 4, 3, 3))),
        ("primary-weight-dtype", call(primary_weight=_x(5, 4, 1, 1, dtype=torch.float64))),
        ("primary-bias-shape", call(primary_bias=_x(4))),
        ("empty-map", call(input=_x(2, 4, 0, 6))),
        ("stride-0", call(stride=[0, 1])),
        ("stride-len3", call(stride=[1, 1, 1])),
        ("cheap-weight-rank3", call(cheap_weight=_x(10, 3, 3))),
        ("cheap-weight-even-kernel", call(cheap_weight=_x(10, 1, 2, 3))),
        ("cheap-weight-dim1", call(cheap_weight=_x(10, 2, 3, 3))),
        ("cheap-weight-not-multiple", call(cheap_weight=_x(8, 1, 3, 3), cheap_bias=None)),
        ("cheap-weight-dtype", call(cheap_weight=_x(10, 1, 3, 3, dtype=torch.float64))),
        ("cheap-bias-shape", call(cheap_bias=_x(5))),
        ("out-channels-too-many", call(out_channels=16)),
        ("out-channels-too-few", call(out_channels=4)),
        ("activation", call(activation="gelu")),
        ("residual-shape", call(residual=_x(2, 13, 6, 5))),
        ("residual-stride-shape", call(residual=_x(2, 13, 6, 6), stride=[2, 2])),
        ("residual-dtype", call(residual=_x(2, 13, 6, 6, dtype=torch.float64))),
        ("order-cheap-and-out-channels", call(cheap_bias=_x(5), out_channels=16)),
        ("order-out-channels-and-activation", call(out_channels=16, activation="gelu")),
    ]


def _ghost_module_backward_cases():
    def call(grad_output=_x(2, 13, 6, 6), output_mask=(True,) * 5, **changes):
        args = _ghost_module_args(**changes)
        del args["residual"]
        return (grad_output, *args.values(), list(output_mask))

    return [
        ("grad-output-shape", call(grad_output=_x(2, 13, 5, 6))),
        ("grad-output-dtype", call(grad_output=_x(2, 13, 6, 6, dtype=torch.float64))),
        ("input-checked-first", call(grad_output=_x(2, 4, 5, 6), primary_weight=_x(5, 3, 1, 1))),
        ("stride", call(stride=[2, 2])),
    ]


def _shufflenet_v2_unit_args(**changes):
    """The stride-1 unit: 8 channels, a branch of 4 on the second half, no shortcut."""
    x, ew, eb, dw, db, pw, pb = _x(2, 8, 6, 6), _x(4, 4, 1, 1), _x(4), _x(4, 1, 3, 3), _x(4), _x(4, 4, 1, 1), _x(4)
    args = dict(input=x, expand_weight=ew, expand_bias=eb, dw_weight=dw, dw_bias=db, project_weight=pw,
                project_bias=pb, shortcut_dw_weight=None, shortcut_dw_bias=None, shortcut_pw_weight=None,
                shortcut_pw_bias=None, stride=ONE, padding=ONE, dilation=ONE, activation="relu")
    args.update(changes)
    return args


def _shufflenet_v2_down_args(**changes):
    """The down-sampling unit: 4 channels into halves of 6, stride 2."""
    args = _shufflenet_v2_unit_args(input=_x(2, 4, 6, 6), expand_weight=_x(6, 4, 1, 1), expand_bias=_x(6),
                                    dw_weight=_x(6, 1, 3, 3), dw_bias=_x(6), project_weight=_x(6, 6, 1, 1),
                                    project_bias=_x(6), shortcut_dw_weight=_x(4, 1, 3, 3), shortcut_dw_bias=_x(4),
                                    shortcut_pw_weight=_x(6, 4, 1, 1), shortcut_pw_bias=_x(6), stride=[2, 2])
    args.update(changes)
    return args


def _shufflenet_v2_unit_cases():
    def call(**changes):
        return tuple(_shufflenet_v2_unit_args(**changes).values())

    def down(**changes):
        return tuple(_shufflenet_v2_down_args(**changes).values())

    return [
        ("input-rank3", call(input=_x(8, 6, 6))),
        ("input-int", call(input=_x(2, 8, 6, 6).int())),
        ("odd-channels", call(input=_x(2, 7, 6, 6))),
        ("zero-channels", call(input=_x(2, 0, 6, 6))),
        ("shortcut-dw-bias-alone", call(shortcut_dw_bias=_x(8))),
        ("shortcut-pw-bias-alone", call(shortcut_pw_bias=_x(4))),
        ("shortcut-dw-weight-alone", call(shortcut_dw_weight=_x(8, 1, 3, 3))),
        ("shortcut-pw-weight-alone", call(shortcut_pw_weight=_x(4, 8, 1, 1))),
        ("expand-weight-shape", call(expand_weight=_x(4, 8, 1, 1))),
        ("expand-weight-kernel", call(expand_weight=_x(4, 4, 3, 3))),
        ("expand-weight-dtype", call(expand_weight=_x(4, 4, 1, 1, dtype=torch.float64))),
        ("expand-bias-shape", call(expand_bias=_x(5))),
        ("expand-bias-dtype", call(expand_bias=_x(4, dtype=torch.float64))),
        ("empty-map", call(input=_x(2, 8, 0, 6))),
        ("dw-weight-channels", call(dw_weight=_x(6, 1, 3, 3))),
        ("dw-weight-rank3", call(dw_weight=_x(4, 3, 3))),
        ("dw-weight-dim1", call(dw_weight=_x(4, 2, 3, 3))),
        ("dw-bias-shape", call(dw_bias=_x(8))),
        ("stride-0", call(stride=[0, 1])),
        ("padding-neg", call(padding=[-1, 1])),
        ("dilation-len3", call(dilation=[1, 1, 1])),
        ("kernel-too-tall", call(dw_weight=_x(4, 1, 9, 3))),
        ("project-weight-shape", call(project_weight=_x(4, 6, 1, 1))),
        ("project-weight-dtype", call(project_weight=_x(4, 4, 1, 1, dtype=torch.float64))),
        ("project-bias-shape", call(project_bias=_x(5))),
        ("project-outputs", call(project_weight=_x(6, 4, 1, 1), project_bias=_x(6))),
        ("activation", call(activation="gelu")),
        ("stride-2", call(stride=[2, 2])),
        ("padding-0", call(padding=ZERO)),
        ("dilation-2", call(dilation=[2, 2])),
        ("order-odd-channels-and-activation", call(input=_x(2, 7, 6, 6), activation="gelu")),
        ("order-activation-and-expand", call(activation="gelu", expand_weight=_x(4, 8, 1, 1))),
        ("order-shortcut-and-odd-channels", call(input=_x(2, 7, 6, 6), shortcut_pw_weight=_x(4, 7, 1, 1))),
        ("order-project-outputs-and-stride", call(project_weight=_x(6, 4, 1, 1), project_bias=None, stride=[2, 2])),
        ("down-expand-weight-half", down(expand_weight=_x(6, 2, 1, 1))),
        ("down-dw-weight-channels", down(dw_weight=_x(4, 1, 3, 3))),
        ("down-shortcut-dw-channels", down(shortcut_dw_weight=_x(6, 1, 3, 3))),
        ("down-shortcut-dw-kernel", down(shortcut_dw_weight=_x(4, 1, 5, 5))),
        ("down-shortcut-dw-rank3", down(shortcut_dw_weight=_x(4, 3, 3))),
        ("down-shortcut-dw-dim1", down(shortcut_dw_weight=_x(4, 2, 3, 3))),
        ("down-shortcut-dw-dtype", down(shortcut_dw_weight=_x(4, 1, 3, 3, dtype=torch.float64))),
        ("down-shortcut-dw-bias-shape", down(shortcut_dw_bias=_x(6))),
        ("down-shortcut-pw-inputs", down(shortcut_pw_weight=_x(6, 3, 1, 1))),
        ("down-shortcut-pw-kernel", down(shortcut_pw_weight=_x(6, 4, 3, 3))),
        ("down-shortcut-pw-dtype", down(shortcut_pw_weight=_x(6, 4, 1, 1, dtype=torch.float64))),
        ("down-shortcut-pw-bias-shape", down(shortcut_pw_bias=_x(4))),
        ("down-shortcut-pw-bias-dtype", down(shortcut_pw_bias=_x(6, dtype=torch.float64))),
        ("down-shortcut-pw-outputs", down(shortcut_pw_weight=_x(5, 4, 1, 1), shortcut_pw_bias=_x(5))),
        ("down-shortcut-pw-missing", down(shortcut_pw_weight=None)),
        ("down-shortcut-dw-missing", down(shortcut_dw_weight=None)),
        ("down-stride-0", down(stride=[2, 0])),
        ("down-padding-neg", down(padding=[0, -1])),
        ("down-kernel-too-tall", down(dw_weight=_x(6, 1, 9, 3), shortcut_dw_weight=_x(4, 1, 9, 3))),
        ("down-order-project-and-shortcut", down(project_weight=_x(6, 5, 1, 1), shortcut_dw_weight=_x(6, 1, 3, 3))),
        ("down-order-shortcut-dw-and-pw", down(shortcut_dw_bias=_x(3), shortcut_pw_weight=_x(6, 3, 1, 1))),
    ]


def _shufflenet_v2_unit_backward_cases():
    def call(grad_output=_x(2, 8, 6, 6), output_mask=(True,) * 11, **changes):
        return (grad_output, *_shufflenet_v2_unit_args(**changes).values(), list(output_mask))

    def down(grad_output=_x(2, 12, 3, 3), output_mask=(True,) * 11, **changes):
        return (grad_output, *_shufflenet_v2_down_args(**changes).values(), list(output_mask))

    return [
        ("grad-output-shape", call(grad_output=_x(2, 8, 5, 6))),
        ("grad-output-channels", call(grad_output=_x(2, 4, 6, 6))),
        ("grad-output-dtype", call(grad_output=_x(2, 8, 6, 6, dtype=torch.float64))),
        ("input-checked-first", call(grad_output=_x(2, 8, 5, 6), expand_weight=_x(4, 8, 1, 1))),
        ("stride-2", call(stride=[2, 2])),
        ("down-grad-output-shape", down(grad_output=_x(2, 6, 3, 3))),
        ("down-grad-output-dtype", down(grad_output=_x(2, 12, 3, 3, dtype=torch.float64))),
        ("down-shortcut-pw-outputs", down(shortcut_pw_weight=_x(5, 4, 1, 1), shortcut_pw_bias=None)),
    ]


def _channel_shuffle_cases():
    x = _x(2, 6, 3, 3)
    return [
        ("input-rank3", (x[0], 2)),
        ("input-int", (x.int(), 2)),
        ("groups-0", (x, 0)),
        ("groups-neg", (x, -3)),
        ("groups-not-dividing", (x, 4)),
        ("order-rank-and-groups", (x[0], 0)),
    ]


def _concat_shuffle_cases():
    a, b = _x(2, 4, 3, 3), _x(2, 2, 3, 3)
    return [
        ("a-rank3", (a[0], b, 2)),
        ("b-rank5", (a, b[None], 2)),
        ("b-int", (a, b.int(), 2)),
        ("b-dtype", (a, b.double(), 2)),
        ("batch-differs", (a, _x(3, 2, 3, 3), 2)),
        ("width-differs", (a, _x(2, 2, 3, 4), 2)),
        ("groups-0", (a, b, 0)),
        ("groups-not-dividing", (a, b, 4)),
        ("order-shape-and-groups", (a, _x(2, 2, 4, 3), 5)),
    ]


def _concat_shuffle_backward_cases():
    grad = _x(2, 6, 3, 3)
    return [
        ("grad-rank3", (grad[0], 2, 2)),
        ("grad-int", (grad.int(), 2, 2)),
        ("groups-0", (grad, 2, 0)),
        ("groups-not-dividing", (grad, 2, 4)),
        ("channels_a-neg", (grad, -1, 2)),
        ("channels_a-too-many", (grad, 7, 2)),
        ("order-groups-and-channels_a", (grad, 7, 4)),
    ]


def _ghost_bottleneck_cases():
    x = _x(2, 4, 6, 6)
    first = dict(primary_weight=_x(5, 4, 1, 1), primary_bias=_x(5), cheap_weight=_x(5, 1, 3, 3), cheap_bias=_x(5))
    second = dict(second_primary_weight=_x(2, 10, 1, 1), second_primary_bias=_x(2),
                  second_cheap_weight=_x(2, 1, 3, 3), second_cheap_bias=_x(2))

    def call(**changes):
        args = dict(input=x, **first, mid_channels=10, activation="relu", dw_weight=None, dw_bias=None, dw_stride=ONE,
                    **second, out_channels=4, second_activation="none", residual=x)
        args.update(changes)
        return tuple(args.values())

    return [
        ("input-rank3", call(input=_x(4, 6, 6))),
        ("first-primary-weight-shape", call(primary_weight=_x(5, 3, 1, 1))),
        ("mid-channels-too-many", call(mid_channels=11)),
        ("first-activation", call(activation="gelu")),
        ("second-primary-weight-shape", call(second_primary_weight=_x(2, 9, 1, 1))),
        ("second-cheap-weight-dtype", call(second_cheap_weight=_x(2, 1, 3, 3, dtype=torch.float64))),
        ("second-out-channels", call(second_primary_weight=_x(1, 10, 1, 1), second_primary_bias=None,
                                     second_cheap_weight=_x(1, 1, 3, 3), second_cheap_bias=None)),
        ("second-activation", call(second_activation="gelu")),
        ("residual-shape", call(dw_weight=_x(10, 1, 3, 3), dw_stride=[2, 2])),
        ("dw-weight-shape", call(dw_weight=_x(10, 1, 2, 3), residual=None)),
        ("dw-weight-dtype", call(dw_weight=_x(10, 1, 3, 3, dtype=torch.float64), residual=None)),
        ("dw-bias-shape", call(dw_weight=_x(10, 1, 3, 3), dw_bias=_x(9), residual=None)),
        ("dw-stride-0", call(dw_weight=_x(10, 1, 3, 3), dw_stride=[0, 1], residual=None)),
        ("dw-bias-alone", call(dw_bias=_x(10))),
    ]


# Internal ops without a Triton mirror, and the Triton launcher of each that has one (called by the Python wrapper).
CPU_ONLY = {"_ghost_bottleneck"}
TRITON_LAUNCHERS = {"_ghost_bottleneck": ("ghost_module", "ghost_bottleneck_forward")}

CASES = {
    "depthwise_conv2d": _depthwise_cases(),
    "_depthwise_conv2d_backward": _depthwise_backward_cases(),
    "dwpw_conv2d": _dwpw_cases(),
    "_dwpw_conv2d_backward": _dwpw_backward_cases(),
    "inverted_residual": _inverted_residual_cases(),
    "_inverted_residual_backward": _inverted_residual_backward_cases(),
    "ghost_module": _ghost_module_cases(),
    "_ghost_module_backward": _ghost_module_backward_cases(),
    "shufflenet_v2_unit": _shufflenet_v2_unit_cases(),
    "_shufflenet_v2_unit_backward": _shufflenet_v2_unit_backward_cases(),
    "channel_shuffle": _channel_shuffle_cases(),
    "concat_shuffle": _concat_shuffle_cases(),
    "_ghost_bottleneck": _ghost_bottleneck_cases(),
    "_concat_shuffle_backward": _concat_shuffle_backward_cases(),
}


def _params():
    for op, cases in CASES.items():
        for case_name, args in cases:
            yield pytest.param(op, args, id=f"{op}-{case_name}")


def _to(device, args):
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)


def _error(op, args):
    with pytest.raises(Exception) as info:
        op(*args)
    return type(info.value), str(info.value)


def _triton_runs_on_cpu():
    return _extension.has_triton() and _extension.triton_interpreter_enabled()


@pytest.mark.parametrize("name, args", _params())
def test_python_checks_say_what_cpp_checks_say(name, args):
    native = _error(getattr(torch.ops.fusedops, name), args)
    assert native[1].startswith("fusedops: "), native
    fake = _error(getattr(torch.ops.fusedops, name), _to("meta", args))
    assert fake == native
    if _triton_runs_on_cpu() and name not in CPU_ONLY:
        assert _error(getattr(torch.ops.fusedops_triton, name), args) == native
    if _triton_runs_on_cpu() and name in TRITON_LAUNCHERS:
        module, launcher = TRITON_LAUNCHERS[name]
        assert _error(getattr(importlib.import_module(f"fusedops.ops._triton.{module}"), launcher), args) == native

