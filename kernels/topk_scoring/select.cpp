// Candidate selection of one scored tile, the compiled half of the CPU top-K path (cpu.py).
//
// One streaming pass over an items-major tile of scores [R, B] (users contiguous): per user a
// gate that an item must beat, a min-heap of the k best scores held so far, and the list of held
// items. The gate starts at the scan's threshold and rises to just below (k-th best held score -
// slack) once k are held: an item below that is beaten by k held items even if every score is off
// by slack / 2 (the bf16 tiles' error bound; slack 0 for exact scores, where ties are kept). Most
// rows are rejected by one vectorisable comparison against all gates.

#include <torch/extension.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// The largest float below which no score s >= kth - slack lies (computed in double): s >= kth -
// slack implies s > gate, so ties with the bound are held.
float gate_below(float kth, float slack) {
  const double bound = static_cast<double>(kth) - static_cast<double>(slack);
  const float gate = static_cast<float>(bound);
  return static_cast<double>(gate) >= bound ? std::nextafter(gate, kNegInf) : gate;
}

// One user's held items; cut back to those above the gate each time `limit` are held.
struct Held {
  std::vector<float> scores;
  std::vector<int64_t> rows;
  std::vector<float> work;  // scratch for nth_element
  size_t limit = 0;

  // Raise `gate` to just below (k-th best held score - slack) and drop what it rejects.
  void cut(float& gate, float thr, float slack, int64_t k) {
    if (static_cast<int64_t>(scores.size()) >= k) {
      work.assign(scores.begin(), scores.end());
      std::nth_element(work.begin(), work.begin() + (k - 1), work.end(), std::greater<float>());
      gate = std::max(thr, std::max(gate, gate_below(work[k - 1], slack)));
    }
    size_t kept = 0;
    for (size_t i = 0; i < scores.size(); ++i) {
      if (scores[i] > gate) {
        scores[kept] = scores[i];
        rows[kept] = rows[i];
        ++kept;
      }
    }
    scores.resize(kept);
    rows.resize(kept);
    limit = std::max(limit, 2 * kept);  // many ties: cut less often
  }
};

// Bit i set where row[i] > gate[i], for the lanes [0, n) of one block of at most 16 users.
inline uint32_t above(const float* row, const float* gate, int64_t n) {
#ifdef __AVX512F__
  if (n == 16)
    return _mm512_cmp_ps_mask(_mm512_loadu_ps(row), _mm512_loadu_ps(gate), _CMP_GT_OQ);
  const auto lanes = static_cast<__mmask16>((1u << n) - 1);
  return _mm512_mask_cmp_ps_mask(lanes, _mm512_maskz_loadu_ps(lanes, row),
                                 _mm512_maskz_loadu_ps(lanes, gate), _CMP_GT_OQ);
#else
#ifdef __AVX2__
  if (n == 16) {
    const auto half = [&](int64_t i) {
      const __m256 gt = _mm256_cmp_ps(_mm256_loadu_ps(row + i), _mm256_loadu_ps(gate + i), _CMP_GT_OQ);
      return static_cast<uint32_t>(_mm256_movemask_ps(gt));
    };
    return half(0) | half(8) << 8;
  }
#endif
  uint32_t bits = 0;
  for (int64_t i = 0; i < n; ++i) bits |= static_cast<uint32_t>(row[i] > gate[i]) << i;
  return bits;
#endif
}

}  // namespace

// Returns (scores [B, W], rows [B, W]) of every item with score > thr[b] that k held items do not
// provably beat, rows counted from row_offset (pads: -inf and -1), or nothing when some user
// holds more than cap.
std::vector<torch::Tensor> tile_candidates(const torch::Tensor& scores, const torch::Tensor& thr,
                                           const torch::Tensor& slack, int64_t k, int64_t cap,
                                           int64_t row_offset) {
  TORCH_CHECK(scores.dim() == 2 && scores.scalar_type() == torch::kFloat32 &&
                  scores.is_contiguous() && scores.device().is_cpu(),
              "scores must be a contiguous float32 CPU tensor [R, B]");
  const int64_t n_rows = scores.size(0), n_users = scores.size(1);
  TORCH_CHECK(thr.numel() == n_users && slack.numel() == n_users,
              "thr and slack need one float32 entry per user");
  TORCH_CHECK(k >= 1 && cap >= k, "need 1 <= k <= cap");
  const torch::Tensor thr32 = thr.to(torch::kFloat32).contiguous();
  const torch::Tensor slack32 = slack.to(torch::kFloat32).contiguous();
  const float* s = scores.data_ptr<float>();
  const float* t = thr32.data_ptr<float>();
  const float* m = slack32.data_ptr<float>();

  std::vector<float> gate(t, t + n_users);
  std::vector<Held> held(n_users);
  for (Held& h : held) h.limit = static_cast<size_t>(2 * k);
  const int64_t n_blocks = (n_users + 15) / 16;
  std::vector<uint32_t> bits(n_blocks);
  for (int64_t r = 0; r < n_rows; ++r) {
    const float* row = s + r * n_users;
    uint32_t any = 0;  // one branch per row: most rows hold nothing
    for (int64_t j = 0; j < n_blocks; ++j) {
      bits[j] = above(row + 16 * j, gate.data() + 16 * j, std::min<int64_t>(16, n_users - 16 * j));
      any |= bits[j];
    }
    if (!any) continue;
    for (int64_t j = 0; j < n_blocks; ++j) {
      for (uint32_t hits = bits[j]; hits; hits &= hits - 1) {
        const int64_t b = 16 * j + __builtin_ctz(hits);
        Held& h = held[b];
        h.scores.push_back(row[b]);
        h.rows.push_back(r);
        if (h.scores.size() >= h.limit) h.cut(gate[b], t[b], m[b], k);
      }
    }
  }

  int64_t width = 0;
  for (int64_t b = 0; b < n_users; ++b) {
    held[b].cut(gate[b], t[b], m[b], k);
    width = std::max(width, static_cast<int64_t>(held[b].scores.size()));
  }
  if (width > cap) return {};
  torch::Tensor out_scores = torch::full({n_users, width}, kNegInf, torch::kFloat32);
  torch::Tensor out_rows = torch::full({n_users, width}, -1, torch::kInt64);
  float* os = out_scores.data_ptr<float>();
  int64_t* orow = out_rows.data_ptr<int64_t>();
  for (int64_t b = 0; b < n_users; ++b) {
    std::copy(held[b].scores.begin(), held[b].scores.end(), os + b * width);
    std::transform(held[b].rows.begin(), held[b].rows.end(), orow + b * width,
                   [row_offset](int64_t row) { return row + row_offset; });
  }
  return {out_scores, out_rows};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("tile_candidates", &tile_candidates, "candidates of one scored tile (see select.cpp)",
        pybind11::call_guard<pybind11::gil_scoped_release>());
}
