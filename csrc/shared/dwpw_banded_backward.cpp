// The backward of fusedops::dwpw_conv2d on every native backend (the CPU and CUDA registrations call it):
// the depthwise output recomputed band by band with ATen ops and fusedops' own depthwise kernels. Declared in
// fusedops/dwpw.h.
#include "fusedops/activation_ops.h"
#include "fusedops/dwpw.h"
#include "fusedops/ops.h"

#include <ATen/OpMathType.h>

#include <algorithm>

namespace fusedops {

using at::Tensor;

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> dwpw_conv2d_backward_banded(
    const Tensor& grad_output_, const Tensor& input_, const Tensor& dw_weight, const c10::optional<Tensor>& dw_bias,
    const Tensor& pw_weight, const c10::optional<Tensor>& pw_bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, std::string_view mid_activation, std::string_view out_activation,
    std::array<bool, 5> output_mask, const c10::optional<Tensor>& output, int64_t band_elements) {
  const DwpwGeometry geo = dwpw_geometry(input_, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation,
                                         mid_activation, out_activation);
  const ConvGeometry& g = geo.dw;
  check_same_device(grad_output_, input_, "grad_output", "input");
  TORCH_CHECK(grad_output_.scalar_type() == input_.scalar_type(), "fusedops: grad_output dtype ",
              dtype_name(grad_output_.scalar_type()), " does not match input dtype ", dtype_name(input_.scalar_type()));
  TORCH_CHECK(grad_output_.sizes() == at::IntArrayRef({g.batch, geo.out_channels, g.out_h, g.out_w}),
              "fusedops: grad_output has shape ", grad_output_.sizes(), " but the output has shape (", g.batch, ", ",
              geo.out_channels, ", ", g.out_h, ", ", g.out_w, ")");
  const at::MemoryFormat fmt = output_memory_format(input_);
  const at::ScalarType dtype = input_.scalar_type();
  const at::ScalarType op = at::toOpMathType(dtype);
  const auto opt = input_.options().dtype(op);
  const int64_t K = g.out_channels, OC = geo.out_channels;

  // Everything is computed in the accumulation type (float for half/bfloat16).
  const Tensor dww = dw_weight.to(op);
  const Tensor dwb = (dw_bias.has_value() && dw_bias->defined()) ? dw_bias->to(op) : Tensor();
  const Tensor pww = pw_weight.to(op);  // (OC, K, 1, 1)
  const Tensor pwb = (pw_bias.has_value() && pw_bias->defined()) ? pw_bias->to(op) : Tensor();

  // Bands: whole images when several fit the budget, else bands of output rows of one image. Each band
  // after the first also makes a pointwise-weight-sized gradient to add up: bands under twice the
  // weight's size would cost more memory in those than they save in activations.
  band_elements = std::max(band_elements, 2 * OC * K);
  // Per output row: the depthwise and pointwise intermediates, plus the band's input gradient (stride_h
  // input rows of C channels), which the depthwise backward returns as a temporary of its own.
  const int64_t in_grad_row = output_mask[0] ? g.channels * g.stride_h * g.in_w : 0;
  const int64_t per_row = std::max<int64_t>(1, (K + OC) * g.out_w + in_grad_row);
  // Row bands of equal height (the last one not a sliver): ceil(OH / bands) rows each.
  const int64_t max_rows = std::clamp<int64_t>(band_elements / per_row, 1, g.out_h);
  const int64_t row_bands = (g.out_h + max_rows - 1) / max_rows;
  const int64_t rows = (g.out_h + row_bands - 1) / row_bands;
  const int64_t images = rows < g.out_h ? 1 : std::clamp<int64_t>(band_elements / (per_row * g.out_h), 1, g.batch);
  const int64_t ext_h = dilated_extent(g.kernel_h, g.dilation_h);
  // Whole-image bands read the input in place (the convolution pads) and write disjoint input gradients;
  // row bands read a zero-padded copy of their rows and add overlapping input gradients.
  const bool whole = rows == g.out_h;

  Tensor grad_input;
  if (output_mask[0]) {
    const auto grad_opt = opt.memory_format(fmt);
    if (!(whole && images == g.batch)) {
      grad_input = at::empty(input_.sizes(), grad_opt);
    }
  }
  // Parameter gradients: the first band's partial sums become the accumulators (one band, the common
  // case at batch 1, then allocates nothing more than its result).
  Tensor grad_dww, grad_dwb, grad_pww, grad_pwb;
  auto accumulate = [](Tensor& total, Tensor&& part) {
    if (total.defined()) {
      total.add_(part);
    } else {
      total = std::move(part);
    }
  };
  const bool need_dw = output_mask[0] || output_mask[1] || output_mask[2];
  // The saved output stands in for the recomputed u only where its rounding cannot move a value onto a
  // bound (dwpw_keeps_output: float/double, the dtype the recomputation would use anyway).
  const bool use_output = output.has_value() && output->defined() && dwpw_keeps_output(geo.out, dtype);
  if (use_output) {
    check_same_device(*output, input_, "output", "input");
    TORCH_CHECK(output->scalar_type() == dtype && output->sizes() == grad_output_.sizes(),
                "fusedops: output must be the forward's result, of shape ", grad_output_.sizes(), " and dtype ",
                dtype_name(dtype), "; got shape ", output->sizes(), " and dtype ", dtype_name(output->scalar_type()));
  }

  // The depthwise stage runs fusedops' own depthwise kernels (through the dispatcher: CPU or CUDA).
  const auto& dw_forward = ops::handle<ops::depthwise_conv2d>();
  const auto& dw_backward = ops::handle<ops::depthwise_conv2d_backward>();
  const c10::optional<Tensor> dwb_opt = dwb.defined() ? c10::optional<Tensor>(dwb) : c10::nullopt;

  for (int64_t n0 = 0; n0 < g.batch; n0 += images) {
    const int64_t n1 = std::min(g.batch, n0 + images), nb = n1 - n0;
    // Row bands: input rows below `filled` hold their gradient already; a band adds into the rows it
    // shares with the previous band, copies the rest, and rows no window reads are zeroed.
    int64_t filled = 0;
    for (int64_t r0 = 0; r0 < g.out_h; r0 += rows) {
      const int64_t r1 = std::min(g.out_h, r0 + rows), R = r1 - r0;
      // Input rows [lo, hi) feed output rows [r0, r1); rows outside the image are zero padding.
      const int64_t lo = r0 * g.stride_h - g.pad_h, hi = (r1 - 1) * g.stride_h - g.pad_h + ext_h;
      const int64_t in_lo = std::max<int64_t>(lo, 0), in_hi = std::min(hi, g.in_h);
      Tensor x;
      std::array<int64_t, 2> band_pad{0, g.pad_w};
      if (whole) {
        x = input_.slice(0, n0, n1).to(op);
        band_pad[0] = g.pad_h;
      } else if (in_hi > in_lo) {
        x = input_.slice(0, n0, n1).slice(2, in_lo, in_hi).to(op);
        if (in_lo - lo > 0 || hi - in_hi > 0) {
          // Zero rows above/below the image, in the input's layout (the 1x1 convolutions below pick their
          // fast kernels by layout, and a mixed-layout pair falls back to a slow one).
          Tensor padded = at::empty({nb, g.channels, hi - lo, g.in_w}, opt.memory_format(fmt));
          padded.slice(2, 0, in_lo - lo).zero_();
          padded.slice(2, in_hi - lo, hi - lo).zero_();
          padded.slice(2, in_lo - lo, in_hi - lo).copy_(x);
          x = padded;
        }
      } else {
        x = at::zeros({nb, g.channels, hi - lo, g.in_w}, opt.memory_format(fmt));
      }
      // Band temporaries are dropped right after their last use: the peak memory of a training step is the
      // point of recomputing, so at most ~3 band-sized buffers are alive at once.
      Tensor z = dw_forward.call(x, dww, dwb_opt, stride, band_pad, dilation);
      // relu/relu6 are applied in place: their derivative reads the same from the activation as from z.
      const bool grad_reads_a = activation_grad_reads_output(geo.mid);
      Tensor a = grad_reads_a ? activation_forward_(z, geo.mid) : activation_forward(z, geo.mid);
      // The pointwise GEMMs run as 1x1 convolutions (oneDNN on CPU, cuDNN on CUDA): on CPUs where MKL's
      // SGEMM takes its generic path (AMD EPYC here: 200 GFLOP/s), oneDNN's kernels run twice as fast.
      Tensor go = grad_output_.slice(0, n0, n1).slice(2, r0, r1).to(op);
      if (use_output) {
        // relu/relu6: the derivative is 0 exactly where the output sits at a bound (0, or 6).
        const Tensor y = output->slice(0, n0, n1).slice(2, r0, r1);
        go = activation_backward_into(at::empty_like(y), go, y, geo.out);
      } else if (geo.out != Activation::kNone) {
        // The gradient through the output activation lands in u's buffer (grad_output is not ours to overwrite).
        const Tensor u = at::conv2d(a, pww, pwb.defined() ? c10::optional<Tensor>(pwb) : c10::nullopt);
        go = activation_backward_into(u, go, u, geo.out);
      }
      auto [grad_a, gpw, gpb] = at::convolution_backward(go, a, pww, at::IntArrayRef{OC}, {1, 1}, {0, 0}, {1, 1}, false,
                                                         {0, 0}, 1, {need_dw, output_mask[3], output_mask[4]});
      go.reset();
      if (!grad_reads_a) a.reset();
      if (output_mask[3]) accumulate(grad_pww, std::move(gpw));
      if (output_mask[4]) accumulate(grad_pwb, std::move(gpb));
      if (!need_dw) continue;
      Tensor grad_z = std::move(grad_a);
      activation_backward_into(grad_z, grad_z, grad_reads_a ? a : z, geo.mid);
      z.reset();
      a.reset();
      auto [gx, gw, gb] = dw_backward.call(grad_z, x, dww, stride, band_pad, dilation,
                                           {output_mask[0], output_mask[1], output_mask[2]});
      grad_z.reset();
      if (output_mask[1]) accumulate(grad_dww, std::move(gw));
      if (output_mask[2]) accumulate(grad_dwb, std::move(gb));
      if (output_mask[0] && whole && images == g.batch) {
        grad_input = gx;  // one band holds everything: its gradient is the answer, no copy
      } else if (output_mask[0] && whole) {
        grad_input.slice(0, n0, n1).copy_(gx);
      } else if (output_mask[0] && in_hi > in_lo) {
        const Tensor dst = grad_input.slice(0, n0, n1);
        if (in_lo > filled) dst.slice(2, filled, in_lo).zero_();
        const int64_t shared = std::clamp<int64_t>(filled, in_lo, in_hi);
        if (shared > in_lo) dst.slice(2, in_lo, shared).add_(gx.slice(2, in_lo - lo, shared - lo));
        if (in_hi > shared) dst.slice(2, shared, in_hi).copy_(gx.slice(2, shared - lo, in_hi - lo));
        filled = std::max(filled, in_hi);
      }
    }
    if (output_mask[0] && !whole && filled < g.in_h) grad_input.slice(0, n0, n1).slice(2, filled, g.in_h).zero_();
  }
  // No bands ran (an empty batch or output): gradients are zeros.
  if (output_mask[0] && !grad_input.defined()) grad_input = at::zeros(input_.sizes(), opt.memory_format(fmt));
  if (output_mask[1] && !grad_dww.defined()) grad_dww = at::zeros(dw_weight.sizes(), opt);
  if (output_mask[2] && !grad_dwb.defined()) grad_dwb = at::zeros({K}, opt);
  if (output_mask[3] && !grad_pww.defined()) grad_pww = at::zeros(pw_weight.sizes(), opt);
  if (output_mask[4] && !grad_pwb.defined()) grad_pwb = at::zeros({OC}, opt);
  auto finish = [&](const Tensor& t, const Tensor& like, at::MemoryFormat f) {
    if (!t.defined()) return at::empty({0}, input_.options());
    return t.to(dtype).reshape(like.sizes()).contiguous(f);
  };
  const auto plain = at::MemoryFormat::Contiguous;
  return {finish(grad_input, input_, fmt), finish(grad_dww, dw_weight, plain), finish(grad_dwb, grad_dwb, plain),
          finish(grad_pww, pw_weight, plain), finish(grad_pwb, grad_pwb, plain)};
}

}  // namespace fusedops
