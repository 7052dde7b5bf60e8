"""Taking the folded weights of a model's fused blocks as constants (an explicit deployment step).

:class:`FoldedWeights` is what the fused blocks share for it: the folded-weight cache of a frozen block, and the
hooks that drop that cache whenever PyTorch itself rewrites the block (conversions, loads, copies).
"""

import operator

import torch
from torch import nn

from .. import _backend
from ..ops import _library


class FoldedWeights:
    """Mixin (before ``nn.Module`` in the bases) for a block whose fused path takes weights with its batch norms
    folded in. The block defines ``_fold()``, returning the folded tensors computed afresh (differentiably) from
    its parameters and buffers, and calls :meth:`_folded_weights` in its fused path.

    By default every call folds anew, so the block never runs on stale weights however they were written.
    :meth:`freeze` takes the folded weights as constants instead, folded once without gradients; the cache is
    dropped by ``.to()``-style conversions (``_apply``), ``load_state_dict``, ``copy.deepcopy`` and pickling,
    and by :meth:`freeze`/:meth:`unfreeze`, but not by any other change of the weights.
    """

    _frozen = False
    _folded = None  # the frozen folded weights; None until folded (and after anything that refolds)
    _packed = None  # (the frozen folded weights, their kernel-ready form) once _packed_weights made it
    _prepared = None  # (the frozen folded weights, key, the native op's arguments, inference, context) once made

    @property
    def frozen(self) -> bool:
        """Whether :meth:`freeze` is in effect."""
        return self._frozen

    def freeze(self):
        """Folds the batch norms once and reuses the folded weights as constants until :meth:`unfreeze`
        (see the class description for what refolds them). Returns the module."""
        self._frozen = True
        self._folded = None
        return self

    def unfreeze(self):
        """Back to folding on every call. Returns the module."""
        self._frozen = False
        self._folded = None
        return self

    def _fold(self):
        raise NotImplementedError

    def _folded_weights(self):
        # Under torch.compile the fold is traced into the graph: no cache is written from inside a trace.
        if not self._frozen or torch.compiler.is_compiling():
            return self._fold()
        folded = self._folded
        # Weights folded under inference_mode are inference tensors, which autograd cannot save outside it.
        # (The first tensor decides: all were folded together; a block's optional stages fold to None.)
        if folded is None or (next(t for t in folded if t is not None).is_inference()
                              and not torch.is_inference_mode_enabled()):
            with torch.no_grad():
                folded = self._folded = _constants(self._fold())
        return folded

    def _packed_weights(self, folded, input, op_name, pack):
        """The native CPU kernel's form of `folded` (what ``pack()`` returns) for a call of op `op_name` on `input`,
        made once per frozen fold: when `folded` is the frozen cache of :meth:`_folded_weights`, the form made for
        it last time, else ``pack()`` now. None when `folded` is not the frozen cache (not frozen) or in a trace
        (which folds in the graph), whose folds change from call to call, and where another implementation runs
        the call (another device or backend, a build without the extension: the packing is a native op, and the
        others take no packed weights)."""
        if (torch.compiler.is_compiling() or folded is None or folded is not self._folded
                or input.device.type != "cpu" or _backend.resolve_for(input, op_name) != _backend.NATIVE):
            return None
        cached = self._packed
        # The cache holds the fold it was made from, so `is` cannot match a later fold at a reused address.
        if cached is None or cached[0] is not folded:
            with torch.no_grad():
                cached = self._packed = (folded, pack())
        return cached[1]

    def _prepare_call(self, op_name, folded, key, arguments, context=None, residual_at=None):
        """Remembers the eager native call of op `op_name` the fused path just made on the frozen fold `folded`, with
        `arguments` after the input (and the call's residual, its own, inserted before argument `residual_at` where
        that is given), for :meth:`_call_prepared` to make again while that fold is current and `key` (the block's
        geometry and options, compared by identity) unchanged. `context` is what the block needs to check before
        its next call (its submodules, found once instead of on every call): :meth:`_prepared_record`."""
        if folded is not None and folded is self._folded:
            inference = next(t for t in folded if t is not None).is_inference()
            call = _prepared_native_call(op_name, arguments, residual_at)
            self._prepared = (folded, key, call, inference, context)

    def _prepared_record(self, input):
        """What :meth:`_prepare_call` kept, ``(folded, key, call, inference, context)``, where a call on `input` may
        be made the same way again as far as the fold and the input tell: the frozen fold still current, an eager
        call of the native kernel on a plain CPU tensor, and folded inference tensors only under inference mode.
        Else None. The caller compares the key. ``call(input[, residual])`` makes the call: the op's result, or
        NotImplemented where the native op declines it (:func:`_prepared_native_call`)."""
        prepared = self._prepared
        if (prepared is None or prepared[0] is not self._folded or not _backend.runs_native_eagerly(input)
                or (prepared[3] and not torch.is_inference_mode_enabled())):
            return None
        return prepared

    def _call_prepared(self, input, key, *residual):
        """The call :meth:`_prepare_call` kept, made again on `input` (and `residual`, where it was prepared with
        ``residual_at``) when :meth:`_prepared_record` allows and `key` is the same objects. This skips the fused
        path's Python (folding check, packing check, argument normalisation): ~6 us of a block's ~15 us fixed cost.
        NotImplemented where no call applies or the native op declines it."""
        prepared = self._prepared_record(input)
        if prepared is None or not same_objects(prepared[1], key):
            return NotImplemented
        return prepared[2](input, *residual)

    # What refolds a frozen module: conversions (.to(), .cuda(), .half(), memory formats all go through _apply),
    # load_state_dict, and copies (deepcopy and pickle drop the folded weights).
    def _apply(self, fn, *args, **kwargs):
        self._folded = None
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._folded = None
        super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_folded"] = None
        state.pop("_packed", None)
        state.pop("_prepared", None)
        return state

    def __setstate__(self, state):
        state.pop("_folded_key", None)  # pickles of earlier versions, which cached by version counters
        state.setdefault("_frozen", False)
        super().__setstate__(state)
        self._folded = None


def _prepared_native_call(op_name, arguments, residual_at):
    """The callable of a prepared call (FoldedWeights._prepare_call): ``call(input)``, or with `residual_at`
    ``call(input, residual)``, runs op `op_name` on them and `arguments`. The native op bound to `arguments`
    (_library.bound_native: converted once, not on every call), or where an argument does not bind, the eager
    callable given them all on each call."""
    if residual_at is None:
        template = (..., *arguments)
    else:
        template = (..., *arguments[:residual_at], ..., *arguments[residual_at:])
    bound = _library.bound_native(op_name, template)
    if bound is not None:
        return bound
    native = _library.eager_native(op_name)
    if residual_at is None:
        return lambda input: native(input, *arguments)
    return lambda input, residual: native(input, *arguments[:residual_at], residual, *arguments[residual_at:])


def same_objects(kept, key) -> bool:
    """Whether tuples `kept` and `key` hold the same objects, position by position (identity, not equality: a
    reassigned attribute is a new object even where it compares equal)."""
    return len(kept) == len(key) and all(map(operator.is_, kept, key))


def _constants(folded):
    """`folded` with every parameter a block passes on unfolded (the squeeze-excitation's 1x1 convolutions) replaced
    by a detached copy: frozen weights are constants, which neither record gradients nor follow later in-place edits
    of the parameters. Nested tuples, None and strings are kept."""
    if isinstance(folded, tuple):
        return tuple(_constants(t) for t in folded)
    if isinstance(folded, torch.Tensor) and (isinstance(folded, nn.Parameter) or folded.requires_grad):
        return folded.detach().clone()
    return folded


def freeze(model: nn.Module) -> nn.Module:
    r"""Freezes every fused block in ``model`` (``model`` itself included), every
    :class:`fusedops.nn.DepthwiseSeparableConv2d`, :class:`fusedops.nn.InvertedResidual`,
    :class:`fusedops.nn.InvertedResidualV3`, :class:`fusedops.nn.TimmInvertedResidual`,
    :class:`fusedops.nn.TimmDepthwiseSeparable`, :class:`fusedops.nn.ConvBNActivation` and
    :class:`fusedops.nn.PairedConv2d`: their batch norms are folded once and the folded weights reused as constants, as
    ``torch.jit.freeze`` and Inductor's freezing take weights, instead of being folded on every call. Changes to the
    weights made afterwards other than through ``.to()``-style conversions, ``load_state_dict``, copies and pickling are
    not seen until :func:`unfreeze` (or another :func:`freeze`). Returns ``model``.

        >>> model = fusedops.freeze(fusedops.models.mobilenet_v1().eval())
    """
    for module in model.modules():
        if isinstance(module, FoldedWeights):
            module.freeze()
    return model


def unfreeze(model: nn.Module) -> nn.Module:
    """Undoes :func:`freeze`: the blocks fold their weights on every call again. Returns ``model``."""
    for module in model.modules():
        if isinstance(module, FoldedWeights):
            module.unfreeze()
    return model
