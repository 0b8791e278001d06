// Multi-scale deformable attention on the CPU: forward and backward, parallel (ATen/OpenMP) and without atomics.
//
// value (N, S, M, D) | spatial_shapes (L, 2) (H_l, W_l) | level_start_index (L,) | sampling_locations
// (N, Lq, M, L, P, 2) (x, y) in [0, 1] | attention_weights (N, Lq, M, L, P) -> output (N, Lq, M * D).
// Bilinear, zero outside the map, align_corners=False: the pixel (i, j) of a level has its centre at
// ((j + 0.5) / W, (i + 0.5) / H), as F.grid_sample(2 * loc - 1) reads it.
//
// Forward: one task per (batch, query), every head. Backward: one task per (batch, head), which alone writes that
// head's slice of the value gradient (and its queries' location and weight gradients), so nothing is shared.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace {

// The four corners of a bilinear sample: offset into (S * M * D) rows of the level, weight, and the partial
// derivatives of the weight along x and y (in pixels). Corners outside the map get weight 0 and offset -1.
template <typename T>
struct Corners {
  int64_t offset[4];
  T weight[4];
  T dw_dx[4];
  T dw_dy[4];
  bool any;
};

template <typename T>
inline void corners(T x, T y, int64_t h, int64_t w, Corners<T>& c) {
  const T h_im = y * h - T(0.5);
  const T w_im = x * w - T(0.5);
  c.any = h_im > T(-1) && w_im > T(-1) && h_im < T(h) && w_im < T(w);
  if (!c.any) return;
  const T h_low_f = std::floor(h_im), w_low_f = std::floor(w_im);
  const int64_t h_low = static_cast<int64_t>(h_low_f), w_low = static_cast<int64_t>(w_low_f);
  const T lh = h_im - h_low_f, lw = w_im - w_low_f, hh = T(1) - lh, hw = T(1) - lw;
  const int64_t ys[4] = {h_low, h_low, h_low + 1, h_low + 1};
  const int64_t xs[4] = {w_low, w_low + 1, w_low, w_low + 1};
  const T wt[4] = {hh * hw, hh * lw, lh * hw, lh * lw};
  const T dx[4] = {-hh, hh, -lh, lh};
  const T dy[4] = {-hw, -lw, hw, lw};
  for (int k = 0; k < 4; ++k) {
    const bool inside = ys[k] >= 0 && ys[k] < h && xs[k] >= 0 && xs[k] < w;
    c.offset[k] = inside ? ys[k] * w + xs[k] : -1;
    c.weight[k] = inside ? wt[k] : T(0);
    c.dw_dx[k] = dx[k];
    c.dw_dy[k] = dy[k];
  }
}

void check(const torch::Tensor& value, const torch::Tensor& shapes, const torch::Tensor& starts,
           const torch::Tensor& loc, const torch::Tensor& attn) {
  TORCH_CHECK(value.device().is_cpu() && loc.device().is_cpu() && attn.device().is_cpu(), "CPU tensors expected");
  TORCH_CHECK(value.dim() == 4 && loc.dim() == 6 && attn.dim() == 5 && loc.size(5) == 2, "bad ranks");
  TORCH_CHECK(value.is_contiguous() && loc.is_contiguous() && attn.is_contiguous(), "contiguous tensors expected");
  TORCH_CHECK(value.scalar_type() == loc.scalar_type() && value.scalar_type() == attn.scalar_type(),
              "value, sampling_locations and attention_weights must share a dtype");
  TORCH_CHECK(shapes.scalar_type() == torch::kLong && starts.scalar_type() == torch::kLong, "int64 shapes expected");
  TORCH_CHECK(shapes.size(0) == loc.size(3) && starts.size(0) == loc.size(3), "levels disagree");
  TORCH_CHECK(loc.size(0) == value.size(0) && loc.size(2) == value.size(2), "batch or heads disagree");
  auto hw = shapes.contiguous().cpu();
  auto st = starts.contiguous().cpu();
  for (int64_t l = 0; l < hw.size(0); ++l) {  // every level inside value: the kernel reads without bounds checks
    const int64_t h = hw[l][0].item<int64_t>(), w = hw[l][1].item<int64_t>(), s = st[l].item<int64_t>();
    TORCH_CHECK(h >= 0 && w >= 0 && s >= 0 && s + h * w <= value.size(1), "level ", l, " (", h, "x", w,
                " from ", s, ") lies outside value's ", value.size(1), " positions");
  }
}

template <typename scalar_t>
void forward_impl(const scalar_t* v, const int64_t* hw, const int64_t* st, const scalar_t* loc, const scalar_t* att,
                scalar_t* out, int64_t n, int64_t s, int64_t m, int64_t d, int64_t lq, int64_t nl, int64_t np) {
  at::parallel_for(0, n * lq, 16, [&](int64_t begin, int64_t end) {
    Corners<scalar_t> c;
    for (int64_t nq = begin; nq < end; ++nq) {
      const int64_t b = nq / lq;
      for (int64_t h = 0; h < m; ++h) {
        scalar_t* o = out + (nq * m + h) * d;
        const int64_t sample0 = (nq * m + h) * nl * np;
        for (int64_t l = 0; l < nl; ++l) {
          const int64_t height = hw[2 * l], width = hw[2 * l + 1];
          const scalar_t* vl = v + ((b * s + st[l]) * m + h) * d;  // pixel k of the level at vl + k * m * d
          for (int64_t p = 0; p < np; ++p) {
            const int64_t i = sample0 + l * np + p;
            corners(loc[2 * i], loc[2 * i + 1], height, width, c);
            if (!c.any) continue;
            const scalar_t a = att[i];
            for (int k = 0; k < 4; ++k) {
              if (c.offset[k] < 0) continue;
              const scalar_t wk = a * c.weight[k];
              const scalar_t* src = vl + c.offset[k] * m * d;
#pragma omp simd
              for (int64_t j = 0; j < d; ++j) o[j] += wk * src[j];
            }
          }
        }
      }
    }
  });
}

template <typename scalar_t>
void backward_impl(const scalar_t* v, const int64_t* hw, const int64_t* st, const scalar_t* loc, const scalar_t* att,
                 const scalar_t* go, scalar_t* gv, scalar_t* gl, scalar_t* ga, int64_t n, int64_t s, int64_t m,
                 int64_t d, int64_t lq, int64_t nl, int64_t np) {
  // one task per (batch, head): it owns grad_value[b, :, h, :] and every sample of that head
  at::parallel_for(0, n * m, 1, [&](int64_t begin, int64_t end) {
    Corners<scalar_t> c;
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / m, h = bh % m;
      for (int64_t q = 0; q < lq; ++q) {
        const scalar_t* g = go + ((b * lq + q) * m + h) * d;
        const int64_t sample0 = ((b * lq + q) * m + h) * nl * np;
        for (int64_t l = 0; l < nl; ++l) {
          const int64_t height = hw[2 * l], width = hw[2 * l + 1];
          const int64_t row0 = ((b * s + st[l]) * m + h) * d;
          for (int64_t p = 0; p < np; ++p) {
            const int64_t i = sample0 + l * np + p;
            corners(loc[2 * i], loc[2 * i + 1], height, width, c);
            if (!c.any) continue;
            const scalar_t a = att[i];
            scalar_t sample = 0, gx = 0, gy = 0;
            for (int k = 0; k < 4; ++k) {
              if (c.offset[k] < 0) continue;
              const scalar_t* src = v + row0 + c.offset[k] * m * d;
              scalar_t* dst = gv + row0 + c.offset[k] * m * d;
              const scalar_t wk = a * c.weight[k];
              scalar_t dot = 0;
#pragma omp simd reduction(+ : dot)
              for (int64_t j = 0; j < d; ++j) {
                dot += g[j] * src[j];
                dst[j] += wk * g[j];
              }
              sample += c.weight[k] * dot;
              gx += c.dw_dx[k] * dot;
              gy += c.dw_dy[k] * dot;
            }
            ga[i] = sample;
            gl[2 * i] = a * gx * width;
            gl[2 * i + 1] = a * gy * height;
          }
        }
      }
    }
  });
}

}  // namespace

torch::Tensor ms_deform_attn_forward(const torch::Tensor& value, const torch::Tensor& spatial_shapes,
                                     const torch::Tensor& level_start_index, const torch::Tensor& sampling_locations,
                                     const torch::Tensor& attention_weights) {
  check(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const int64_t n = value.size(0), s = value.size(1), m = value.size(2), d = value.size(3);
  const int64_t lq = sampling_locations.size(1), nl = sampling_locations.size(3), np = sampling_locations.size(4);
  auto shapes = spatial_shapes.contiguous();
  auto starts = level_start_index.contiguous();
  auto output = torch::zeros({n, lq, m * d}, value.options());
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_forward", [&] {
    forward_impl<scalar_t>(value.data_ptr<scalar_t>(), shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(),
                           sampling_locations.data_ptr<scalar_t>(), attention_weights.data_ptr<scalar_t>(),
                           output.data_ptr<scalar_t>(), n, s, m, d, lq, nl, np);
  });
  return output;
}

std::vector<torch::Tensor> ms_deform_attn_backward(const torch::Tensor& value, const torch::Tensor& spatial_shapes,
                                                   const torch::Tensor& level_start_index,
                                                   const torch::Tensor& sampling_locations,
                                                   const torch::Tensor& attention_weights,
                                                   const torch::Tensor& grad_output) {
  check(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  TORCH_CHECK(grad_output.is_contiguous() && grad_output.scalar_type() == value.scalar_type(), "bad grad_output");
  const int64_t n = value.size(0), s = value.size(1), m = value.size(2), d = value.size(3);
  const int64_t lq = sampling_locations.size(1), nl = sampling_locations.size(3), np = sampling_locations.size(4);
  auto shapes = spatial_shapes.contiguous();
  auto starts = level_start_index.contiguous();
  auto grad_value = torch::zeros_like(value);
  auto grad_loc = torch::zeros_like(sampling_locations);
  auto grad_attn = torch::zeros_like(attention_weights);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_backward", [&] {
    backward_impl<scalar_t>(value.data_ptr<scalar_t>(), shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(),
                            sampling_locations.data_ptr<scalar_t>(), attention_weights.data_ptr<scalar_t>(),
                            grad_output.data_ptr<scalar_t>(), grad_value.data_ptr<scalar_t>(),
                            grad_loc.data_ptr<scalar_t>(), grad_attn.data_ptr<scalar_t>(), n, s, m, d, lq, nl, np);
  });
  return {grad_value, grad_loc, grad_attn};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("forward", &ms_deform_attn_forward, "multi-scale deformable attention, forward (CPU)");
  module.def("backward", &ms_deform_attn_backward, "multi-scale deformable attention, backward (CPU)");
}
