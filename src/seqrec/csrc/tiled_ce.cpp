// Per-tile kernels of seqrec's full-catalog cross-entropy (see seqrec/fused_ce.py, which holds the
// eager reference of the same two passes). Compiled on first use by seqrec/native.py.
//
// One row chunk h (C x D) against the catalog w (N1 x D) in item tiles of `tile` columns. Tile i's
// (C x width) block lives contiguously at blocks + i * C * tile. OpenMP threads take whole tiles;
// ATen ops inside a parallel region run on the calling thread, so each small matmul is single-threaded
// and no op pays a fork/join. The elementwise work of a tile (bias, padding mask, row max, exp, sum)
// is one fused loop per row while the row is in L1.
#include <torch/extension.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <vector>

namespace {

// Runs one iteration of an OpenMP loop. Grad mode is per thread (on by default in OpenMP's
// threads): the kernels record no graph. An exception must not leave an OpenMP region
// (std::terminate): the first is kept and rethrown after the region.
class FirstError {
 public:
  template <typename F>
  void run(F&& body) {
    try {
      at::NoGradGuard no_grad;
      body();
    } catch (...) {
#pragma omp critical(seqrec_first_error)
      if (!error_) error_ = std::current_exception();
    }
  }
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::exception_ptr error_;
};

constexpr float kFloor = -3.0e38f;  // row maximum floor: a row of a tile holding only padding
constexpr float kPadding = -3.4e38f;  // the padding item's logit, below the floor: exp(x - m) = 0

// Pass 1: blocks[i] = exp(logits_i - m_i) with m_i the row maximum; tile_max[i] = m_i, tile_sum[i] = row sums.
void exp_tiles(const at::Tensor& h, const at::Tensor& w, const c10::optional<at::Tensor>& bias,
               at::Tensor& blocks, int64_t tile, at::Tensor& tile_max, at::Tensor& tile_sum, int64_t threads) {
  const int64_t C = h.size(0), N1 = w.size(0);
  const int64_t n_tiles = (N1 + tile - 1) / tile;
  float* base = blocks.data_ptr<float>();
  float* tmax = tile_max.data_ptr<float>();
  float* tsum = tile_sum.data_ptr<float>();
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  FirstError error;
#pragma omp parallel for schedule(static, 1) num_threads(threads)
  for (int64_t i = 0; i < n_tiles; ++i) error.run([&] {
    const int64_t lo = i * tile, width = std::min(tile, N1 - lo);
    float* out = base + i * C * tile;
    at::Tensor logits = at::from_blob(out, {C, width}, blocks.options());
    at::mm_out(logits, h, w.narrow(0, lo, width).t());
    for (int64_t r = 0; r < C; ++r) {
      float* x = out + r * width;
      if (b != nullptr) {
        for (int64_t j = 0; j < width; ++j) x[j] += b[lo + j];
      }
      if (lo == 0) x[0] = kPadding;
      float m = kFloor;
      for (int64_t j = 0; j < width; ++j) m = std::max(m, x[j]);
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < width; ++j) {
        const float e = std::exp(x[j] - m);
        x[j] = e;
        s += e;
      }
      tmax[i * C + r] = m;
      tsum[i * C + r] = s;
    }
  });
  error.rethrow();
}

// Pass 2, with scales[i] = exp(m_i - lse) per row (softmax_i = blocks[i] * scales[i]):
// grad_h += sum_i diag(scales[i]) blocks[i] @ w_i, grad_w[tile i] += blocks[i]^T @ (h * scales[i]),
// grad_b[tile i] += blocks[i]^T @ scales[i]. grad_h is summed over per-thread copies in thread order.
void accumulate_tiles(const at::Tensor& h, const at::Tensor& w, at::Tensor& blocks, int64_t tile,
                      const at::Tensor& scales, at::Tensor& grad_h, at::Tensor& grad_w,
                      const c10::optional<at::Tensor>& grad_b, int64_t threads) {
  const int64_t C = h.size(0), D = h.size(1), N1 = w.size(0);
  const int64_t n_tiles = (N1 + tile - 1) / tile;
  float* base = blocks.data_ptr<float>();
  std::vector<at::Tensor> partial(threads);
  for (int64_t k = 0; k < threads; ++k) partial[k] = at::zeros({C, D}, h.options());
  std::vector<at::Tensor> prods(threads), scaled(threads);  // per-thread (C, D) scratch
  for (int64_t k = 0; k < threads; ++k) {
    prods[k] = at::empty({C, D}, h.options());
    scaled[k] = at::empty({C, D}, h.options());
  }
  FirstError error;
#pragma omp parallel num_threads(threads)
  {
    const int k = omp_get_thread_num();
    float* g = partial[k].data_ptr<float>();
    at::Tensor& prod = prods[k];
    at::Tensor& hs = scaled[k];
    const float* p = prod.data_ptr<float>();
#pragma omp for schedule(static, 1)
    for (int64_t i = 0; i < n_tiles; ++i) error.run([&] {
      const int64_t lo = i * tile, width = std::min(tile, N1 - lo);
      at::Tensor e = at::from_blob(base + i * C * tile, {C, width}, blocks.options());
      const at::Tensor sc = scales[i];
      const float* s = sc.data_ptr<float>();
      at::mm_out(prod, e, w.narrow(0, lo, width));
      for (int64_t r = 0; r < C; ++r) {
        for (int64_t d = 0; d < D; ++d) g[r * D + d] += s[r] * p[r * D + d];
      }
      at::mul_out(hs, h, sc.unsqueeze(1));
      grad_w.narrow(0, lo, width).addmm_(e.t(), hs);
      if (grad_b.has_value()) grad_b->narrow(0, lo, width).addmv_(e.t(), sc);
    });
  }
  error.rethrow();
  for (int64_t k = 0; k < threads; ++k) grad_h.add_(partial[k]);
}


// Recomputing variant: nothing is stored between the passes. Each thread scores its tiles into its
// own (C x width) buffer that stays in L2: pass A keeps each row's max and sum of exp, pass B scores
// the tile again, turns it into softmax probabilities with the final lse and feeds them to the two
// gradient matmuls while the buffer is hot. One more matmul per tile than the stored variant, but no
// (C x catalog) workspace written to and read back from memory.
void score_rows(const at::Tensor& h, const at::Tensor& w, const float* b, int64_t lo, int64_t width,
                at::Tensor& buf) {
  at::mm_out(buf, h, w.narrow(0, lo, width).t());
  float* x = buf.data_ptr<float>();
  const int64_t C = h.size(0);
  for (int64_t r = 0; r < C; ++r) {
    float* row = x + r * width;
    if (b != nullptr) {
      for (int64_t j = 0; j < width; ++j) row[j] += b[lo + j];
    }
    if (lo == 0) row[0] = kPadding;
  }
}

void tile_stats(const at::Tensor& h, const at::Tensor& w, const c10::optional<at::Tensor>& bias, int64_t tile,
                at::Tensor& tile_max, at::Tensor& tile_sum, int64_t threads) {
  const int64_t C = h.size(0), N1 = w.size(0);
  const int64_t n_tiles = (N1 + tile - 1) / tile;
  float* tmax = tile_max.data_ptr<float>();
  float* tsum = tile_sum.data_ptr<float>();
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  FirstError error;
#pragma omp parallel num_threads(threads)
  {
    at::Tensor scratch = at::empty({C * tile}, h.options());
#pragma omp for schedule(static, 1)
    for (int64_t i = 0; i < n_tiles; ++i) error.run([&] {
      const int64_t lo = i * tile, width = std::min(tile, N1 - lo);
      at::Tensor buf = scratch.narrow(0, 0, C * width).view({C, width});
      score_rows(h, w, b, lo, width, buf);
      const float* x = buf.data_ptr<float>();
      for (int64_t r = 0; r < C; ++r) {
        const float* row = x + r * width;
        float m = kFloor;
        for (int64_t j = 0; j < width; ++j) m = std::max(m, row[j]);
        float s = 0.f;
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < width; ++j) s += std::exp(row[j] - m);
        tmax[i * C + r] = m;
        tsum[i * C + r] = s;
      }
    });
  }
  error.rethrow();
}

void tile_grads(const at::Tensor& h, const at::Tensor& w, const c10::optional<at::Tensor>& bias, int64_t tile,
                const at::Tensor& lse, at::Tensor& grad_h, at::Tensor& grad_w,
                const c10::optional<at::Tensor>& grad_b, int64_t threads) {
  const int64_t C = h.size(0), D = h.size(1), N1 = w.size(0);
  const int64_t n_tiles = (N1 + tile - 1) / tile;
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  const float* l = lse.data_ptr<float>();
  std::vector<at::Tensor> partial(threads);
  for (int64_t k = 0; k < threads; ++k) partial[k] = at::zeros({C, D}, h.options());
  FirstError error;
#pragma omp parallel num_threads(threads)
  {
    at::Tensor& gh = partial[omp_get_thread_num()];
    at::Tensor scratch = at::empty({C * tile}, h.options());
#pragma omp for schedule(static, 1)
    for (int64_t i = 0; i < n_tiles; ++i) error.run([&] {
      const int64_t lo = i * tile, width = std::min(tile, N1 - lo);
      at::Tensor p = scratch.narrow(0, 0, C * width).view({C, width});
      score_rows(h, w, b, lo, width, p);
      float* x = p.data_ptr<float>();
      for (int64_t r = 0; r < C; ++r) {
        float* row = x + r * width;
        const float shift = l[r];
#pragma omp simd
        for (int64_t j = 0; j < width; ++j) row[j] = std::exp(row[j] - shift);
      }
      gh.addmm_(p, w.narrow(0, lo, width));
      grad_w.narrow(0, lo, width).addmm_(p.t(), h);
      if (grad_b.has_value()) grad_b->narrow(0, lo, width).add_(p.sum(0));
    });
  }
  error.rethrow();
  for (int64_t k = 0; k < threads; ++k) grad_h.add_(partial[k]);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("exp_tiles", &exp_tiles, py::call_guard<py::gil_scoped_release>());
  m.def("accumulate_tiles", &accumulate_tiles, py::call_guard<py::gil_scoped_release>());
  m.def("tile_stats", &tile_stats, py::call_guard<py::gil_scoped_release>());
  m.def("tile_grads", &tile_grads, py::call_guard<py::gil_scoped_release>());
}
