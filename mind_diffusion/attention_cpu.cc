// Fused multi-head attention for MindSpore on CPU (an "aot" Custom operator, see cpu_attention.py).
//
//   o[b, i, h, :] = sum_j softmax_j(q[b, i, h, :] . k[b, j, h, :]) v[b, j, h, :]
//
// Two layouts, float32 and contiguous, so that no head transposes are needed on either side:
// - MindDiffusionAttention: q (B, N, H, D), k and v (B, M, H, D), o (B, N, H, D): what the LDM
//   UNet's Dense projections produce (channels last);
// - MindDiffusionAttentionCF: q (G, D, N), k and v (G, D, M), o (G, D, N) with G = batch x heads:
//   what 1x1-convolution projections produce (channels first: GLIDE's QKV attention, the VAE).
// The scale is the caller's (folded into q, or into q and k). No mask.
//
// The work is split into tasks of (batch, head, block of query rows). Each task computes its
// block of scores S = Q_blk K^T with oneDNN's sgemm (MindSpore's own libdnnl), takes the softmax
// of each row in place (max-subtracted exp, the sum in float32), and writes O_blk = P V / rowsum
// straight into the output's strided rows. A block holds about 1 MiB of scores, so the
// (B*H, N, M) score matrix of the composed path (1 GiB at 4096 x 4096 positions, batch 2, 8 heads)
// never exists. Tasks are spread over the process's CPUs (sched_getaffinity), or
// $MIND_DIFFUSION_ATTENTION_THREADS threads, with an atomic counter; each sgemm call runs on its
// caller's thread.
//
// Returns 0 on success, 1 for inputs it does not take (MindSpore then raises).
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

extern "C" int dnnl_sgemm(char transa, char transb, int64_t M, int64_t N, int64_t K, float alpha,
                          const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                          float *C, int64_t ldc);

namespace {

int worker_count(int64_t tasks) {
  int n = 0;
  if (const char *env = std::getenv("MIND_DIFFUSION_ATTENTION_THREADS")) {
    // a positive integer, all of it; anything else means the default (Python says so once)
    char *end = nullptr;
    const long v = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && v > 0 && v < 1 << 16) n = static_cast<int>(v);
  }
  if (n <= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    n = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
  }
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n, tasks)));
}

struct Problem {
  const float *q, *k, *v;
  float *o;
  int64_t B, N, M, H, D, rows_per_block, blocks;
  bool channels_first;
};

// softmax of each row of scores (rows x M) in place, unnormalised; inv[r] = 1 / row sum
void softmax_rows(float *scores, int64_t rows, int64_t M, float *inv) {
  for (int64_t r = 0; r < rows; ++r) {
    float *row = scores + r * M;
    float mx = row[0];
    for (int64_t j = 1; j < M; ++j) mx = std::max(mx, row[j]);
    float sum = 0.0f;
    for (int64_t j = 0; j < M; ++j) {
      const float e = std::exp(row[j] - mx);
      row[j] = e;
      sum += e;
    }
    inv[r] = 1.0f / sum;
  }
}

// channels first: q (G, D, N), k / v (G, D, M), o (G, D, N); task = (g, block of query columns)
bool run_task_cf(const Problem &p, int64_t task, float *scores, float *inv) {
  const int64_t g = task / p.blocks, blk = task % p.blocks;
  const int64_t r0 = blk * p.rows_per_block;
  const int64_t rows = std::min(p.rows_per_block, p.N - r0);
  const float *qp = p.q + g * p.D * p.N + r0;
  const float *kp = p.k + g * p.D * p.M;
  const float *vp = p.v + g * p.D * p.M;
  float *op = p.o + g * p.D * p.N + r0;
  // S (rows x M) = Q_blk^T K, Q_blk = the (D x rows) columns r0.. of q[g]
  if (dnnl_sgemm('T', 'N', rows, p.M, p.D, 1.0f, qp, p.N, kp, p.M, 0.0f, scores, p.M) != 0) return false;
  softmax_rows(scores, rows, p.M, inv);
  // O_blk (D x rows) = V P^T, written into columns r0.. of o[g]
  if (dnnl_sgemm('N', 'T', p.D, rows, p.M, 1.0f, vp, p.M, scores, p.M, 0.0f, op, p.N) != 0) return false;
  for (int64_t c = 0; c < p.D; ++c) {
    float *orow = op + c * p.N;
    for (int64_t r = 0; r < rows; ++r) orow[r] *= inv[r];
  }
  return true;
}

bool run_task(const Problem &p, int64_t task, float *scores, float *inv) {
  if (p.channels_first) return run_task_cf(p, task, scores, inv);
  const int64_t bh = task / p.blocks, blk = task % p.blocks;
  const int64_t b = bh / p.H, h = bh % p.H;
  const int64_t r0 = blk * p.rows_per_block;
  const int64_t rows = std::min(p.rows_per_block, p.N - r0);
  const int64_t ld = p.H * p.D;
  const float *qp = p.q + (b * p.N + r0) * ld + h * p.D;
  const float *kp = p.k + b * p.M * ld + h * p.D;
  const float *vp = p.v + b * p.M * ld + h * p.D;
  float *op = p.o + (b * p.N + r0) * ld + h * p.D;
  if (dnnl_sgemm('N', 'T', rows, p.M, p.D, 1.0f, qp, ld, kp, ld, 0.0f, scores, p.M) != 0) return false;
  softmax_rows(scores, rows, p.M, inv);
  if (dnnl_sgemm('N', 'N', rows, p.D, p.M, 1.0f, scores, p.M, vp, ld, 0.0f, op, ld) != 0) return false;
  for (int64_t r = 0; r < rows; ++r) {
    float *orow = op + r * ld;
    for (int64_t c = 0; c < p.D; ++c) orow[c] *= inv[r];
  }
  return true;
}

int run(bool channels_first, int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  const int rank = channels_first ? 3 : 4;
  if (nparam != 4) return 1;
  for (int i = 0; i < 4; ++i) {
    if (ndims[i] != rank || std::strcmp(dtypes[i], "float32") != 0) return 1;
  }
  for (int d = 0; d < rank; ++d) {
    if (shapes[3][d] != shapes[0][d]) return 1;
  }
  Problem p;
  p.q = static_cast<const float *>(params[0]);
  p.k = static_cast<const float *>(params[1]);
  p.v = static_cast<const float *>(params[2]);
  p.o = static_cast<float *>(params[3]);
  p.channels_first = channels_first;
  if (channels_first) {
    p.B = shapes[0][0];
    p.H = 1;
    p.D = shapes[0][1];
    p.N = shapes[0][2];
    p.M = shapes[1][2];
    for (int i = 1; i < 3; ++i) {
      if (shapes[i][0] != p.B || shapes[i][1] != p.D || shapes[i][2] != p.M) return 1;
    }
  } else {
    p.B = shapes[0][0];
    p.N = shapes[0][1];
    p.H = shapes[0][2];
    p.D = shapes[0][3];
    p.M = shapes[1][1];
    for (int i = 1; i < 3; ++i) {
      if (shapes[i][0] != p.B || shapes[i][1] != p.M || shapes[i][2] != p.H || shapes[i][3] != p.D) return 1;
    }
  }
  if (p.B <= 0 || p.N <= 0 || p.H <= 0 || p.D <= 0 || p.M <= 0) return 0;
  // ~1 MiB of scores per block (it stays in the core's cache), 16 to 256 rows
  p.rows_per_block = std::max<int64_t>(16, std::min<int64_t>(256, (262144 / p.M) / 16 * 16));
  p.blocks = (p.N + p.rows_per_block - 1) / p.rows_per_block;
  const int64_t tasks = p.B * p.H * p.blocks;
  const int workers = worker_count(tasks);
  std::atomic<int64_t> next(0);
  std::atomic<bool> ok(true);
  auto work = [&]() {
    std::vector<float> scores(static_cast<size_t>(p.rows_per_block * p.M));
    std::vector<float> inv(static_cast<size_t>(p.rows_per_block));
    for (int64_t t = next++; t < tasks && ok.load(std::memory_order_relaxed); t = next++) {
      if (!run_task(p, t, scores.data(), inv.data())) ok = false;
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  for (int w = 1; w < workers; ++w) pool.emplace_back(work);
  work();
  for (auto &t : pool) t.join();
  return ok ? 0 : 1;
}

}  // namespace

extern "C" int MindDiffusionAttention(int nparam, void **params, int *ndims, int64_t **shapes,
                                      const char **dtypes, void *stream, void *extra) {
  (void)stream;
  (void)extra;
  return run(false, nparam, params, ndims, shapes, dtypes);
}

extern "C" int MindDiffusionAttentionCF(int nparam, void **params, int *ndims, int64_t **shapes,
                                        const char **dtypes, void *stream, void *extra) {
  (void)stream;
  (void)extra;
  return run(true, nparam, params, ndims, shapes, dtypes);
}
