// Convolution and dense layers for MindSpore on CPU through an OpenBLAS sgemm; GroupNorm (forward and
// backward), LayerNorm and GEGLU (inference) as one kernel each ("aot" Custom operators, see cpu_gemm.py).
//
// MindSpore 2.10's CPU kernels run on its bundled oneDNN, held to AVX2 (mind_diffusion/_env.py:
// above that cap its plain-NCHW convolution falls to a reference kernel). On the 2-core CI CPU
// that gives about 115 GFLOP/s for a 3x3 convolution and 125 for MatMul, against 270-300 for
// the OpenBLAS that numpy ships (its own AVX-512 kernels, whatever oneDNN is held to). These
// kernels hand the work to that sgemm:
//
// - MindDiffusionConv2d(x (N,C,H,W), w (O,C,kh,kw), p (8,) int64) -> y (N,O,Ho,Wo).
//   p = stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right, dilation_h, dilation_w.
//   * 1x1, stride 1, no padding: y[n] = W x[n], one sgemm per image.
//   * stride 1, at least 32 input channels, more output pixels in the batch than 2x the output
//     channels: the "shifted" form. The image is copied once,
//     padded, into a flat (C, Hp*Wp) buffer; each tap (i, j) of the kernel is one sgemm of its
//     (O, C) weight slice with the buffer read from offset i*dh*Wp + j*dw, accumulated into a
//     "wide" output of Ho rows of Wp columns, whose first Wo columns are the result (the others
//     read across a row's end and are dropped). No im2col copy of kh*kw times the image.
//   * otherwise (strides, few channels): im2col and one sgemm, image by image (the buffer stays in
//     cache: a batch-wide im2col buffer was slower on every shape measured).
// - MindDiffusionConv2dGradInput(dy, w, x, p) -> dx and MindDiffusionConv2dGradWeight(dy, x, w, p)
//   -> dw: the backward, with im2col / col2im (x and w only give their shapes where unused).
// The Python side sends only products large enough to gain (cpu_gemm.py, MIN_WORK); small ones stay
// with MindSpore's kernels, whose oneDNN spreads a batch of small images over the cores better.
// - MindDiffusionMatMulNT(a (M,K), b (N,K)) -> a b^T (nn.Dense), ...NN(a (M,K), b (K,N)) -> a b,
//   ...TN(a (K,M), b (K,N)) -> a^T b (its backward).
//
// - MindDiffusionDnnlConv2d, ...DnnlConv2dGradInput, ...DnnlConv2dGradWeight: the same three with the same
//   parameters, run by oneDNN's convolution primitives where the library was built with MD_WITH_DNNL
//   (see "oneDNN" below): they fall back to the OpenBLAS forms above when oneDNN cannot run one.
// The sgemm is OpenBLAS's CBLAS entry, ILP64 (numpy's build: cblas_sgemm64_) or LP64, chosen
// when the library is built (-DMD_CBLAS_SGEMM=..., -DMD_BLAS_INT=...). OpenBLAS runs its own
// threads. Returns 0 on success, 1 for inputs it does not take (MindSpore then raises).
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#ifndef MD_CBLAS_SGEMM
#define MD_CBLAS_SGEMM cblas_sgemm64_
#endif
#ifndef MD_BLAS_INT
#define MD_BLAS_INT int64_t
#endif

typedef MD_BLAS_INT blasint_t;
extern "C" void MD_CBLAS_SGEMM(int order, int transa, int transb, blasint_t M, blasint_t N, blasint_t K,
                               float alpha, const float *A, blasint_t lda, const float *B, blasint_t ldb,
                               float beta, float *C, blasint_t ldc);

namespace {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

// C (M x N) = alpha op(A) op(B) + beta C, row-major
inline void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                 const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int64_t m = 0; m < M; ++m) {
      float *row = C + m * ldc;
      for (int64_t n = 0; n < N; ++n) row[n] = beta == 0.0f ? 0.0f : row[n] * beta;
    }
    return;
  }
  MD_CBLAS_SGEMM(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, M, N, K, 1.0f, A, lda, B, ldb, beta,
                 C, ldc);
}

bool is_f32(const char *dtype) { return std::strcmp(dtype, "float32") == 0; }

struct Conv {
  int64_t N, C, H, W, O, kh, kw, sh, sw, pt, pb, pl, pr, dh, dw, Ho, Wo;
};

// shapes of x (N,C,H,W), w (O,C,kh,kw) and the parameters; false when they do not fit
bool conv_problem(const int64_t *xs, const int64_t *ws, const int64_t *p, Conv *c) {
  c->N = xs[0];
  c->C = xs[1];
  c->H = xs[2];
  c->W = xs[3];
  c->O = ws[0];
  c->kh = ws[2];
  c->kw = ws[3];
  c->sh = p[0];
  c->sw = p[1];
  c->pt = p[2];
  c->pb = p[3];
  c->pl = p[4];
  c->pr = p[5];
  c->dh = p[6];
  c->dw = p[7];
  if (ws[1] != c->C || c->sh <= 0 || c->sw <= 0 || c->dh <= 0 || c->dw <= 0 || c->pt < 0 || c->pb < 0 ||
      c->pl < 0 || c->pr < 0 || c->kh <= 0 || c->kw <= 0)
    return false;
  const int64_t eh = c->H + c->pt + c->pb - c->dh * (c->kh - 1);
  const int64_t ew = c->W + c->pl + c->pr - c->dw * (c->kw - 1);
  if (eh <= 0 || ew <= 0) return false;
  c->Ho = (eh - 1) / c->sh + 1;
  c->Wo = (ew - 1) / c->sw + 1;
  return true;
}

// col (C*kh*kw, Ho*Wo) of image x (C, H, W)
void im2col(const Conv &c, const float *x, float *col) {
  const int64_t L = c.Ho * c.Wo;
  for (int64_t ch = 0; ch < c.C; ++ch) {
    const float *xc = x + ch * c.H * c.W;
    for (int64_t i = 0; i < c.kh; ++i) {
      for (int64_t j = 0; j < c.kw; ++j) {
        float *dst = col + ((ch * c.kh + i) * c.kw + j) * L;
        for (int64_t y = 0; y < c.Ho; ++y) {
          const int64_t iy = y * c.sh - c.pt + i * c.dh;
          float *d = dst + y * c.Wo;
          if (iy < 0 || iy >= c.H) {
            std::fill(d, d + c.Wo, 0.0f);
            continue;
          }
          const float *srow = xc + iy * c.W;
          for (int64_t xo = 0; xo < c.Wo; ++xo) {
            const int64_t ix = xo * c.sw - c.pl + j * c.dw;
            d[xo] = (ix >= 0 && ix < c.W) ? srow[ix] : 0.0f;
          }
        }
      }
    }
  }
}

// dx (C, H, W) += col2im(col)
void col2im_add(const Conv &c, const float *col, float *dx) {
  const int64_t L = c.Ho * c.Wo;
  for (int64_t ch = 0; ch < c.C; ++ch) {
    float *xc = dx + ch * c.H * c.W;
    for (int64_t i = 0; i < c.kh; ++i) {
      for (int64_t j = 0; j < c.kw; ++j) {
        const float *src = col + ((ch * c.kh + i) * c.kw + j) * L;
        for (int64_t y = 0; y < c.Ho; ++y) {
          const int64_t iy = y * c.sh - c.pt + i * c.dh;
          if (iy < 0 || iy >= c.H) continue;
          float *drow = xc + iy * c.W;
          const float *s = src + y * c.Wo;
          for (int64_t xo = 0; xo < c.Wo; ++xo) {
            const int64_t ix = xo * c.sw - c.pl + j * c.dw;
            if (ix >= 0 && ix < c.W) drow[ix] += s[xo];
          }
        }
      }
    }
  }
}

bool pointwise(const Conv &c) {
  return c.kh == 1 && c.kw == 1 && c.sh == 1 && c.sw == 1 && c.pt == 0 && c.pb == 0 && c.pl == 0 && c.pr == 0;
}

void conv_forward(const Conv &c, const float *x, const float *w, float *y) {
  const int64_t HW = c.H * c.W, L = c.Ho * c.Wo, CK = c.C * c.kh * c.kw;
  if (pointwise(c)) {
    for (int64_t n = 0; n < c.N; ++n) gemm(false, false, c.O, L, c.C, w, c.C, x + n * c.C * HW, HW, 0.0f, y + n * c.O * L, L);
    return;
  }
  // the shifted form repacks the weights (O*C*kh*kw floats) where im2col copies the image kh*kw times
  // (N*C*kh*kw*L): it pays where the images outweigh the kernel and each tap has channels enough
  if (c.sh == 1 && c.sw == 1 && c.C >= 32 && c.N * L >= 2 * c.O) {
    const int64_t Hp = c.H + c.pt + c.pb, Wp = c.W + c.pl + c.pr, P = Hp * Wp, taps = c.kh * c.kw;
    // weight slices (taps, O, C), the padded image with a tail the last taps read past, the wide output
    std::vector<float> wt(static_cast<size_t>(taps * c.O * c.C));
    for (int64_t o = 0; o < c.O; ++o)
      for (int64_t ch = 0; ch < c.C; ++ch)
        for (int64_t t = 0; t < taps; ++t) wt[(t * c.O + o) * c.C + ch] = w[(o * c.C + ch) * taps + t];
    std::vector<float> xp(static_cast<size_t>(c.C * P + c.kw * c.dw + 1), 0.0f);
    std::vector<float> yw(static_cast<size_t>(c.O * c.Ho * Wp));
    for (int64_t n = 0; n < c.N; ++n) {
      const float *xn = x + n * c.C * HW;
      for (int64_t ch = 0; ch < c.C; ++ch)
        for (int64_t r = 0; r < c.H; ++r)
          std::memcpy(&xp[ch * P + (r + c.pt) * Wp + c.pl], xn + ch * HW + r * c.W, sizeof(float) * c.W);
      for (int64_t i = 0; i < c.kh; ++i)
        for (int64_t j = 0; j < c.kw; ++j) {
          const int64_t t = i * c.kw + j;
          gemm(false, false, c.O, c.Ho * Wp, c.C, &wt[t * c.O * c.C], c.C, &xp[i * c.dh * Wp + j * c.dw], P,
               t == 0 ? 0.0f : 1.0f, yw.data(), c.Ho * Wp);
        }
      float *yn = y + n * c.O * L;
      for (int64_t o = 0; o < c.O; ++o)
        for (int64_t r = 0; r < c.Ho; ++r)
          std::memcpy(yn + o * L + r * c.Wo, &yw[(o * c.Ho + r) * Wp], sizeof(float) * c.Wo);
    }
    return;
  }
  // im2col image by image: its buffer (CK x L) stays small enough for the caches
  std::vector<float> col(static_cast<size_t>(CK * L));
  for (int64_t n = 0; n < c.N; ++n) {
    im2col(c, x + n * c.C * HW, col.data());
    gemm(false, false, c.O, L, CK, w, CK, col.data(), L, 0.0f, y + n * c.O * L, L);
  }
}

void conv_grad_input(const Conv &c, const float *dy, const float *w, float *dx) {
  const int64_t HW = c.H * c.W, L = c.Ho * c.Wo, CK = c.C * c.kh * c.kw;
  if (pointwise(c)) {
    for (int64_t n = 0; n < c.N; ++n) gemm(true, false, c.C, L, c.O, w, c.C, dy + n * c.O * L, L, 0.0f, dx + n * c.C * HW, HW);
    return;
  }
  std::vector<float> col(static_cast<size_t>(CK * L));
  std::fill(dx, dx + c.N * c.C * HW, 0.0f);
  for (int64_t n = 0; n < c.N; ++n) {
    gemm(true, false, CK, L, c.O, w, CK, dy + n * c.O * L, L, 0.0f, col.data(), L);
    col2im_add(c, col.data(), dx + n * c.C * HW);
  }
}

void conv_grad_weight(const Conv &c, const float *dy, const float *x, float *dw) {
  const int64_t HW = c.H * c.W, L = c.Ho * c.Wo, CK = c.C * c.kh * c.kw;
  std::fill(dw, dw + c.O * CK, 0.0f);
  if (pointwise(c)) {
    for (int64_t n = 0; n < c.N; ++n) gemm(false, true, c.O, c.C, L, dy + n * c.O * L, L, x + n * c.C * HW, HW, 1.0f, dw, c.C);
    return;
  }
  std::vector<float> col(static_cast<size_t>(CK * L));
  for (int64_t n = 0; n < c.N; ++n) {
    im2col(c, x + n * c.C * HW, col.data());
    gemm(false, true, c.O, CK, L, dy + n * c.O * L, L, col.data(), L, 1.0f, dw, CK);
  }
}

}  // namespace

namespace {

bool dnnl_conv(int kind, const Conv &c, const float *a, const float *b, float *out);

// params: x, w, p, y
int conv_forward_entry(bool dnnl, int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  if (nparam != 4) return 1;
  static const int ranks[] = {4, 4, 1, 4};
  for (int i = 0; i < 4; ++i)
    if (ndims[i] != ranks[i]) return 1;
  if (!is_f32(dtypes[0]) || !is_f32(dtypes[1]) || !is_f32(dtypes[3]) || std::strcmp(dtypes[2], "int64") != 0 ||
      shapes[2][0] != 8)
    return 1;
  Conv c;
  if (!conv_problem(shapes[0], shapes[1], static_cast<const int64_t *>(params[2]), &c)) return 1;
  if (shapes[3][0] != c.N || shapes[3][1] != c.O || shapes[3][2] != c.Ho || shapes[3][3] != c.Wo) return 1;
  const float *x = static_cast<const float *>(params[0]), *w = static_cast<const float *>(params[1]);
  float *y = static_cast<float *>(params[3]);
  if (!dnnl || !dnnl_conv(0, c, x, w, y)) conv_forward(c, x, w, y);
  return 0;
}

}  // namespace

// params: x, w, p, y
extern "C" int MindDiffusionConv2d(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                   void *stream, void *extra) {
  (void)stream;
  (void)extra;
  return conv_forward_entry(false, nparam, params, ndims, shapes, dtypes);
}

extern "C" int MindDiffusionDnnlConv2d(int nparam, void **params, int *ndims, int64_t **shapes,
                                       const char **dtypes, void *stream, void *extra) {
  (void)stream;
  (void)extra;
  return conv_forward_entry(true, nparam, params, ndims, shapes, dtypes);
}

namespace {

// the backward's entry points: params dy, a, b, p, out; for the input gradient a = w, b = x, out = dx
// (x's shape), for the weight gradient a = x, b = w, out = dw (w's shape)
int conv_grad(bool dnnl, bool wrt_input, int nparam, void **params, int *ndims, int64_t **shapes,
              const char **dtypes) {
  if (nparam != 5) return 1;
  static const int ranks[] = {4, 4, 4, 1, 4};
  for (int i = 0; i < 5; ++i)
    if (ndims[i] != ranks[i]) return 1;
  if (!is_f32(dtypes[0]) || !is_f32(dtypes[1]) || !is_f32(dtypes[4]) || std::strcmp(dtypes[3], "int64") != 0 ||
      shapes[3][0] != 8)
    return 1;
  const int64_t *xs = wrt_input ? shapes[2] : shapes[1], *ws = wrt_input ? shapes[1] : shapes[2];
  Conv c;
  if (!conv_problem(xs, ws, static_cast<const int64_t *>(params[3]), &c)) return 1;
  if (shapes[0][0] != c.N || shapes[0][1] != c.O || shapes[0][2] != c.Ho || shapes[0][3] != c.Wo) return 1;
  for (int d = 0; d < 4; ++d)
    if (shapes[4][d] != shapes[2][d]) return 1;
  const float *dy = static_cast<const float *>(params[0]), *a = static_cast<const float *>(params[1]);
  float *out = static_cast<float *>(params[4]);
  if (dnnl && dnnl_conv(wrt_input ? 1 : 2, c, dy, a, out)) return 0;
  if (wrt_input)
    conv_grad_input(c, dy, a, out);
  else
    conv_grad_weight(c, dy, a, out);
  return 0;
}

}  // namespace

// params: dy, w, x, p, dx
extern "C" int MindDiffusionConv2dGradInput(int nparam, void **params, int *ndims, int64_t **shapes,
                                            const char **dtypes, void *stream, void *extra) {
  (void)stream;
  (void)extra;
  return conv_grad(false, true, nparam, params, ndims, shapes, dtypes);
}

extern "C" int MindDiffusionDnnlConv2dGradInput(int nparam, void **params, int *ndims, int64_t **shapes,
                                                const char **dtypes, void *stream, void *extra) {
  (void)stream;
  (void)extra;
  return conv_grad(true, true, nparam, params, ndims, shapes, dtypes);
}

// params: dy, x, w, p, dw
extern "C" int MindDiffusionConv2dGradWeight(int nparam, void **params, int *ndims, int64_t **shapes,
                                             const char **dtypes, void *stream, void *extra) {
  (void)stream;
  (void)extra;
  return conv_grad(false, false, nparam, params, ndims, shapes, dtypes);
}

extern "C" int MindDiffusionDnnlConv2dGradWeight(int nparam, void **params, int *ndims, int64_t **shapes,
                                                 const char **dtypes, void *stream, void *extra) {
  (void)stream;
  (void)extra;
  return conv_grad(true, false, nparam, params, ndims, shapes, dtypes);
}

namespace {

// mode: 0 NT (a (M,K), b (N,K)), 1 NN (a (M,K), b (K,N)), 2 TN (a (K,M), b (K,N)); params a, b, c
int matmul(int mode, int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  if (nparam != 3) return 1;
  for (int i = 0; i < 3; ++i)
    if (ndims[i] != 2 || !is_f32(dtypes[i])) return 1;
  const int64_t *a = shapes[0], *b = shapes[1], *c = shapes[2];
  int64_t M, N, K;
  if (mode == 0) {
    M = a[0], K = a[1], N = b[0];
    if (b[1] != K) return 1;
  } else if (mode == 1) {
    M = a[0], K = a[1], N = b[1];
    if (b[0] != K) return 1;
  } else {
    K = a[0], M = a[1], N = b[1];
    if (b[0] != K) return 1;
  }
  if (c[0] != M || c[1] != N) return 1;
  const float *A = static_cast<const float *>(params[0]), *B = static_cast<const float *>(params[1]);
  float *C = static_cast<float *>(params[2]);
  gemm(mode == 2, mode == 0, M, N, K, A, mode == 2 ? M : K, B, mode == 0 ? K : N, 0.0f, C, N);
  return 0;
}

}  // namespace

extern "C" int MindDiffusionMatMulNT(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                     void *stream, void *extra) {
  (void)stream;
  (void)extra;
  return matmul(0, nparam, params, ndims, shapes, dtypes);
}

extern "C" int MindDiffusionMatMulNN(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                     void *stream, void *extra) {
  (void)stream;
  (void)extra;
  return matmul(1, nparam, params, ndims, shapes, dtypes);
}

extern "C" int MindDiffusionMatMulTN(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                     void *stream, void *extra) {
  (void)stream;
  (void)extra;
  return matmul(2, nparam, params, ndims, shapes, dtypes);
}

// ---- normalisation (inference): the same formulas as nn/layers.py's GroupNorm and LayerNorm ----
// mean, the biased variance of the centred values, rstd = 1 / sqrt(var + eps); y = xc * (gamma * rstd)
// + beta, in float32, spread over the process's CPUs (one task per (image, group) or block of rows).

namespace {

int cpu_count() {
  cpu_set_t set;
  CPU_ZERO(&set);
  return sched_getaffinity(0, sizeof(set), &set) == 0 ? std::max(1, CPU_COUNT(&set)) : 1;
}

template <typename F>
void parallel_for(int64_t tasks, F fn) {
  const int workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(cpu_count(), tasks)));
  std::atomic<int64_t> next(0);
  auto work = [&]() {
    for (int64_t t = next++; t < tasks; t = next++) fn(t);
  };
  std::vector<std::thread> pool;
  for (int w = 1; w < workers; ++w) pool.emplace_back(work);
  work();
  for (auto &t : pool) t.join();
}

// one row of n values: mean and rstd as the composed kernels compute them (sums in double here)
inline void moments(const float *x, int64_t n, float eps, float *mean, float *rstd) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += x[i];
  const float mu = static_cast<float>(s / static_cast<double>(n));
  double v = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const float d = x[i] - mu;
    v += static_cast<double>(d) * d;
  }
  *mean = mu;
  *rstd = 1.0f / std::sqrt(static_cast<float>(v / static_cast<double>(n)) + eps);
}

// (B, C, S = the product of the other axes, groups, eps) of x (B, C, ...) and p = (groups, eps); false
// when they do not fit
struct GroupNormShape {
  int64_t B, C, S, G;
  float eps;
};

bool group_norm_shape(int nd, const int64_t *xs, const float *p, int64_t pn, GroupNormShape *g) {
  if (nd < 2 || pn != 2) return false;
  g->B = xs[0];
  g->C = xs[1];
  g->S = 1;
  for (int d = 2; d < nd; ++d) g->S *= xs[d];
  g->G = static_cast<int64_t>(p[0]);
  g->eps = p[1];
  return g->G > 0 && g->C % g->G == 0;
}

}  // namespace

// params: x (B, C, ...), gamma (C,), beta (C,), p (2,) float32 = (groups, eps), y like x
extern "C" int MindDiffusionGroupNorm(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                      void *stream, void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 5 || ndims[0] < 2 || ndims[1] != 1 || ndims[2] != 1 || ndims[3] != 1 || ndims[4] != ndims[0])
    return 1;
  for (int i = 0; i < 5; ++i)
    if (!is_f32(dtypes[i])) return 1;
  for (int d = 0; d < ndims[0]; ++d)
    if (shapes[4][d] != shapes[0][d]) return 1;
  GroupNormShape gs;
  if (!group_norm_shape(ndims[0], shapes[0], static_cast<const float *>(params[3]), shapes[3][0], &gs) ||
      shapes[1][0] != gs.C || shapes[2][0] != gs.C)
    return 1;
  const int64_t B = gs.B, C = gs.C, S = gs.S, G = gs.G;
  const float eps = gs.eps;
  const float *x = static_cast<const float *>(params[0]), *gamma = static_cast<const float *>(params[1]),
              *beta = static_cast<const float *>(params[2]);
  float *y = static_cast<float *>(params[4]);
  const int64_t cg = C / G, n = cg * S;
  if (B * C * S == 0) return 0;
  parallel_for(B * G, [&](int64_t t) {
    const int64_t g = t % G;
    const float *xg = x + t * n;
    float *yg = y + t * n;
    float mu, rstd;
    moments(xg, n, eps, &mu, &rstd);
    for (int64_t c = 0; c < cg; ++c) {
      const int64_t ch = g * cg + c;
      const float scale = rstd * gamma[ch], shift = beta[ch];
      const float *xs = xg + c * S;
      float *ys = yg + c * S;
      for (int64_t i = 0; i < S; ++i) ys[i] = (xs[i] - mu) * scale + shift;
    }
  });
  return 0;
}

// ---- GroupNorm backward (training): the gradient of y = (x - mu) * rstd * gamma + beta per (image, group) ----
// dx = rstd * (dyg - mean(dyg) - xhat * mean(dyg * xhat)) with dyg = dy * gamma and xhat = (x - mu) * rstd over
// the group; dgamma[c] = sum over images and positions of dy * xhat, dbeta[c] = sum of dy. The moments are
// recomputed from x (nothing is saved by the forward), sums in double.

// params: dy (B, C, ...), x like dy, gamma (C,), p (2,) float32 = (groups, eps), dx like x
extern "C" int MindDiffusionGroupNormGrad(int nparam, void **params, int *ndims, int64_t **shapes,
                                          const char **dtypes, void *stream, void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 5 || ndims[1] != ndims[0] || ndims[2] != 1 || ndims[3] != 1 || ndims[4] != ndims[0]) return 1;
  for (int i = 0; i < 5; ++i)
    if (!is_f32(dtypes[i])) return 1;
  for (int d = 0; d < ndims[0]; ++d)
    if (shapes[1][d] != shapes[0][d] || shapes[4][d] != shapes[0][d]) return 1;
  GroupNormShape g;
  if (!group_norm_shape(ndims[0], shapes[0], static_cast<const float *>(params[3]), shapes[3][0], &g) ||
      shapes[2][0] != g.C)
    return 1;
  const float *dy = static_cast<const float *>(params[0]), *x = static_cast<const float *>(params[1]),
              *gamma = static_cast<const float *>(params[2]);
  float *dx = static_cast<float *>(params[4]);
  const int64_t cg = g.C / g.G, n = cg * g.S;
  if (g.B * g.C * g.S == 0) return 0;
  parallel_for(g.B * g.G, [&](int64_t t) {
    const int64_t grp = t % g.G;
    const float *xg = x + t * n, *dyg = dy + t * n;
    float *dxg = dx + t * n;
    float mu, rstd;
    moments(xg, n, g.eps, &mu, &rstd);
    double s1 = 0.0, s2 = 0.0;
    for (int64_t c = 0; c < cg; ++c) {
      const float gm = gamma[grp * cg + c];
      const float *xs = xg + c * g.S, *ds = dyg + c * g.S;
      double a1 = 0.0, a2 = 0.0;
      for (int64_t i = 0; i < g.S; ++i) {
        const float d = ds[i] * gm;
        a1 += d;
        a2 += static_cast<double>(d * ((xs[i] - mu) * rstd));
      }
      s1 += a1;
      s2 += a2;
    }
    const float m1 = static_cast<float>(s1 / static_cast<double>(n)), m2 = static_cast<float>(s2 / static_cast<double>(n));
    for (int64_t c = 0; c < cg; ++c) {
      const float gm = gamma[grp * cg + c];
      const float *xs = xg + c * g.S, *ds = dyg + c * g.S;
      float *out = dxg + c * g.S;
      for (int64_t i = 0; i < g.S; ++i) out[i] = rstd * (ds[i] * gm - m1 - ((xs[i] - mu) * rstd) * m2);
    }
  });
  return 0;
}

// params: dy (B, C, ...), x like dy, p (2,) float32 = (groups, eps), out (2, C): dgamma, dbeta
extern "C" int MindDiffusionGroupNormGradAffine(int nparam, void **params, int *ndims, int64_t **shapes,
                                                const char **dtypes, void *stream, void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 4 || ndims[1] != ndims[0] || ndims[2] != 1 || ndims[3] != 2) return 1;
  for (int i = 0; i < 4; ++i)
    if (!is_f32(dtypes[i])) return 1;
  for (int d = 0; d < ndims[0]; ++d)
    if (shapes[1][d] != shapes[0][d]) return 1;
  GroupNormShape g;
  if (!group_norm_shape(ndims[0], shapes[0], static_cast<const float *>(params[2]), shapes[2][0], &g) ||
      shapes[3][0] != 2 || shapes[3][1] != g.C)
    return 1;
  const float *dy = static_cast<const float *>(params[0]), *x = static_cast<const float *>(params[1]);
  float *out = static_cast<float *>(params[3]);
  const int64_t cg = g.C / g.G, n = cg * g.S;
  std::fill(out, out + 2 * g.C, 0.0f);
  if (g.B * g.C * g.S == 0) return 0;
  // one task per group: it owns its channels' sums, over every image
  parallel_for(g.G, [&](int64_t grp) {
    std::vector<double> dgamma(cg, 0.0), dbeta(cg, 0.0);
    for (int64_t b = 0; b < g.B; ++b) {
      const int64_t off = (b * g.G + grp) * n;
      float mu, rstd;
      moments(x + off, n, g.eps, &mu, &rstd);
      for (int64_t c = 0; c < cg; ++c) {
        const float *xs = x + off + c * g.S, *ds = dy + off + c * g.S;
        double a = 0.0, s = 0.0;
        for (int64_t i = 0; i < g.S; ++i) {
          a += static_cast<double>(ds[i] * ((xs[i] - mu) * rstd));
          s += ds[i];
        }
        dgamma[c] += a;
        dbeta[c] += s;
      }
    }
    for (int64_t c = 0; c < cg; ++c) {
      out[grp * cg + c] = static_cast<float>(dgamma[c]);
      out[g.C + grp * cg + c] = static_cast<float>(dbeta[c]);
    }
  });
  return 0;
}

// params: x (M, D), gamma (D,), beta (D,), p (1,) float32 = (eps), y (M, D)
extern "C" int MindDiffusionLayerNorm(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                      void *stream, void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 5 || ndims[0] != 2 || ndims[1] != 1 || ndims[2] != 1 || ndims[3] != 1 || ndims[4] != 2) return 1;
  for (int i = 0; i < 5; ++i)
    if (!is_f32(dtypes[i])) return 1;
  const int64_t M = shapes[0][0], D = shapes[0][1];
  if (shapes[1][0] != D || shapes[2][0] != D || shapes[3][0] != 1 || shapes[4][0] != M || shapes[4][1] != D) return 1;
  const float eps = static_cast<const float *>(params[3])[0];
  const float *x = static_cast<const float *>(params[0]), *gamma = static_cast<const float *>(params[1]),
              *beta = static_cast<const float *>(params[2]);
  float *y = static_cast<float *>(params[4]);
  if (M * D == 0) return 0;
  const int64_t rows = 64, tasks = (M + rows - 1) / rows;
  parallel_for(tasks, [&](int64_t t) {
    for (int64_t r = t * rows; r < std::min(M, (t + 1) * rows); ++r) {
      const float *xr = x + r * D;
      float *yr = y + r * D;
      float mu, rstd;
      moments(xr, D, eps, &mu, &rstd);
      for (int64_t i = 0; i < D; ++i) yr[i] = (xr[i] - mu) * rstd * gamma[i] + beta[i];
    }
  });
  return 0;
}

// ---- GEGLU (inference): y = a * gelu(g) for h = [a | g] split on its last axis ----
// The formulas of ldm/unet.py's GEGLU: "exact" gelu(g) = g * (erf(g / sqrt 2) * 0.5 + 0.5); "tanh"
// (MindSpore's GeLU) gelu(g) = 0.5 g (1 + tanh(sqrt(2 / pi) (g + 0.044715 g^3))). One pass over h
// instead of a split copy and six element-wise kernels; erf / tanh are glibc's vector versions
// (-ffast-math, libmvec) where the compiler finds them.

namespace {

template <bool kExact>
void geglu_rows(const float *h, float *y, int64_t r0, int64_t r1, int64_t I) {
  for (int64_t r = r0; r < r1; ++r) {
    const float *a = h + r * 2 * I, *g = a + I;
    float *o = y + r * I;
    if (kExact) {
      for (int64_t i = 0; i < I; ++i) o[i] = a[i] * (g[i] * (std::erf(g[i] * 0.70710678118654752f) * 0.5f + 0.5f));
    } else {
      for (int64_t i = 0; i < I; ++i) {
        const float x = g[i];
        o[i] = a[i] * (0.5f * x * (1.0f + std::tanh(0.79788456080286536f * (x + 0.044715f * x * x * x))));
      }
    }
  }
}

}  // namespace

// params: h (..., 2I), p (1,) float32 = (1 for exact erf, 0 for tanh), y (..., I)
extern "C" int MindDiffusionGeGLU(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                  void *stream, void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 3 || ndims[0] < 1 || ndims[1] != 1 || ndims[2] != ndims[0]) return 1;
  for (int i = 0; i < 3; ++i)
    if (!is_f32(dtypes[i])) return 1;
  const int nd = ndims[0];
  const int64_t two_i = shapes[0][nd - 1], I = two_i / 2;
  if (two_i % 2 != 0 || shapes[1][0] != 1 || shapes[2][nd - 1] != I) return 1;
  int64_t M = 1;
  for (int d = 0; d + 1 < nd; ++d) {
    if (shapes[2][d] != shapes[0][d]) return 1;
    M *= shapes[0][d];
  }
  const bool exact = static_cast<const float *>(params[1])[0] != 0.0f;
  const float *h = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[2]);
  if (M * I == 0) return 0;
  const int64_t rows = std::max<int64_t>(1, 16384 / I), tasks = (M + rows - 1) / rows;
  parallel_for(tasks, [&](int64_t t) {
    const int64_t r0 = t * rows, r1 = std::min(M, r0 + rows);
    if (exact)
      geglu_rows<true>(h, y, r0, r1, I);
    else
      geglu_rows<false>(h, y, r0, r1, I);
  });
  return 0;
}

// ---- BatchNorm + ReLU (inference; the FID Inception's BasicConv, whose BN has no gamma) ----
// y = max((x - mean[c]) * (1 / sqrt(var[c] + eps)) + beta[c], 0): the scale and shift as oneDNN's
// inference batch normalisation forms them (MindSpore's CPU BatchNorm), then the ReLU, in one pass.

// params: x (B, C, ...), beta (C,), mean (C,), var (C,), p (1,) float32 = (eps), y like x
extern "C" int MindDiffusionBatchNormReLU(int nparam, void **params, int *ndims, int64_t **shapes,
                                          const char **dtypes, void *stream, void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 6 || ndims[0] < 2 || ndims[5] != ndims[0] || ndims[4] != 1 || shapes[4][0] != 1) return 1;
  for (int i = 0; i < 6; ++i)
    if (!is_f32(dtypes[i])) return 1;
  const int64_t B = shapes[0][0], C = shapes[0][1];
  int64_t S = 1;
  for (int d = 2; d < ndims[0]; ++d) S *= shapes[0][d];
  for (int d = 0; d < ndims[0]; ++d)
    if (shapes[5][d] != shapes[0][d]) return 1;
  for (int i = 1; i < 4; ++i)
    if (ndims[i] != 1 || shapes[i][0] != C) return 1;
  const float *x = static_cast<const float *>(params[0]), *beta = static_cast<const float *>(params[1]),
              *mean = static_cast<const float *>(params[2]), *var = static_cast<const float *>(params[3]);
  const float eps = static_cast<const float *>(params[4])[0];
  float *y = static_cast<float *>(params[5]);
  if (B * C * S == 0) return 0;
  parallel_for(B * C, [&](int64_t t) {
    const int64_t c = t % C;
    const float scale = 1.0f / std::sqrt(var[c] + eps), mu = mean[c], shift = beta[c];
    const float *xs = x + t * S;
    float *ys = y + t * S;
    for (int64_t i = 0; i < S; ++i) ys[i] = std::max((xs[i] - mu) * scale + shift, 0.0f);
  });
  return 0;
}

// ---- the training step's overflow check: 1 when x holds a NaN or an infinity, else 0 ----
// By the exponent bits (all ones), which -ffast-math cannot assume away as it may std::isfinite; one
// read of x, where MindSpore's CPU IsFinite + ReduceAll (or ReduceSum) took 6-7 ns an element.

// params: x (any shape, float32), y (1,) float32
extern "C" int MindDiffusionNonFinite(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                      void *stream, void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 2 || !is_f32(dtypes[0]) || !is_f32(dtypes[1]) || ndims[1] != 1 || shapes[1][0] != 1) return 1;
  int64_t n = 1;
  for (int d = 0; d < ndims[0]; ++d) n *= shapes[0][d];
  const uint32_t *bits = static_cast<const uint32_t *>(params[0]);
  constexpr uint32_t kExp = 0x7F800000u;
  constexpr int64_t kChunk = 1 << 20;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<uint32_t> worst(static_cast<size_t>(std::max<int64_t>(1, chunks)), 0u);
  auto scan = [&](int64_t c) {
    uint32_t m = 0;
    const int64_t e = std::min(n, (c + 1) * kChunk);
    for (int64_t i = c * kChunk; i < e; ++i) m = std::max(m, bits[i] & kExp);
    worst[c] = m;
  };
  parallel_for(chunks, scan);  // one chunk: on the caller's thread
  uint32_t m = 0;
  for (uint32_t w : worst) m = std::max(m, w);
  static_cast<float *>(params[1])[0] = m == kExp ? 1.0f : 0.0f;
  return 0;
}

// ---- oneDNN convolutions (MD_WITH_DNNL) ----
// MindSpore's CPU convolutions run on the oneDNN it bundles, held to AVX2 by ONEDNN_MAX_CPU_ISA (above
// that cap its plain-NCHW convolution is a reference kernel) and driven in the plain layout: 90-120
// GFLOP/s on the 2-core CI CPU. oneDNN's own blocked-layout AVX-512 kernels reach 250-430 on the same
// shapes, the kernels PyTorch runs. This section loads a separate copy of oneDNN (the onednn-cpu-gomp
// wheel, path MD_DNNL_PATH) by its file path, with RTLD_LOCAL, so MindSpore's copy (the same soname)
// and its ISA cap stay as they are; the C functions are looked up with dlsym, and the ISA limit of this
// copy is set through its API (which takes precedence over the environment variable). Each geometry gets
// a plan once: the primitives chosen with format "any" (blocked layouts), and reorders between the NCHW /
// OIHW tensors MindSpore passes and those layouts; the blocked copies live in one shared arena. Plans
// are built and run under one lock (convolutions run one at a time; oneDNN spreads each over the cores
// with OpenMP). Any failure returns false, and the caller runs the OpenBLAS form instead.
#ifdef MD_WITH_DNNL
#include <dlfcn.h>

#include <map>
#include <mutex>
#include <string>

#include "oneapi/dnnl/dnnl.h"

namespace {

struct DnnlApi {
  decltype(&dnnl_engine_create) engine_create = nullptr;
  decltype(&dnnl_stream_create) stream_create = nullptr;
  decltype(&dnnl_stream_wait) stream_wait = nullptr;
  decltype(&dnnl_memory_desc_create_with_tag) md_create = nullptr;
  decltype(&dnnl_memory_desc_equal) md_equal = nullptr;
  decltype(&dnnl_memory_desc_get_size) md_size = nullptr;
  decltype(&dnnl_memory_desc_destroy) md_destroy = nullptr;
  decltype(&dnnl_primitive_desc_destroy) pd_destroy = nullptr;
  decltype(&dnnl_primitive_desc_query_md) query_md = nullptr;
  decltype(&dnnl_convolution_forward_primitive_desc_create) fwd_pd = nullptr;
  decltype(&dnnl_convolution_backward_data_primitive_desc_create) bwd_data_pd = nullptr;
  decltype(&dnnl_convolution_backward_weights_primitive_desc_create) bwd_weights_pd = nullptr;
  decltype(&dnnl_reorder_primitive_desc_create) reorder_pd = nullptr;
  decltype(&dnnl_primitive_create) primitive_create = nullptr;
  decltype(&dnnl_primitive_execute) execute = nullptr;
  decltype(&dnnl_memory_create) memory_create = nullptr;
  decltype(&dnnl_memory_set_data_handle) set_handle = nullptr;
  decltype(&dnnl_set_max_cpu_isa) set_max_isa = nullptr;
  decltype(&dnnl_get_effective_cpu_isa) effective_isa = nullptr;
  decltype(&dnnl_version) version = nullptr;
  dnnl_engine_t engine = nullptr;
  dnnl_stream_t stream = nullptr;
  bool ok = false;
  std::string info;
};

std::mutex g_dnnl_lock;

template <class F>
bool dnnl_sym(void *lib, const char *name, F *fn, std::string *missing) {
  *fn = reinterpret_cast<F>(dlsym(lib, name));
  if (*fn == nullptr && missing->empty()) *missing = name;
  return *fn != nullptr;
}

DnnlApi &dnnl_api() {
  static DnnlApi api;
  static std::once_flag once;
  std::call_once(once, [] {
    void *lib = dlopen(MD_DNNL_PATH, RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      const char *err = dlerror();
      api.info = std::string("cannot load ") + MD_DNNL_PATH + ": " + (err ? err : "?");
      return;
    }
    std::string missing;
    dnnl_sym(lib, "dnnl_engine_create", &api.engine_create, &missing);
    dnnl_sym(lib, "dnnl_stream_create", &api.stream_create, &missing);
    dnnl_sym(lib, "dnnl_stream_wait", &api.stream_wait, &missing);
    dnnl_sym(lib, "dnnl_memory_desc_create_with_tag", &api.md_create, &missing);
    dnnl_sym(lib, "dnnl_memory_desc_equal", &api.md_equal, &missing);
    dnnl_sym(lib, "dnnl_memory_desc_get_size", &api.md_size, &missing);
    dnnl_sym(lib, "dnnl_memory_desc_destroy", &api.md_destroy, &missing);
    dnnl_sym(lib, "dnnl_primitive_desc_destroy", &api.pd_destroy, &missing);
    dnnl_sym(lib, "dnnl_primitive_desc_query_md", &api.query_md, &missing);
    dnnl_sym(lib, "dnnl_convolution_forward_primitive_desc_create", &api.fwd_pd, &missing);
    dnnl_sym(lib, "dnnl_convolution_backward_data_primitive_desc_create", &api.bwd_data_pd, &missing);
    dnnl_sym(lib, "dnnl_convolution_backward_weights_primitive_desc_create", &api.bwd_weights_pd, &missing);
    dnnl_sym(lib, "dnnl_reorder_primitive_desc_create", &api.reorder_pd, &missing);
    dnnl_sym(lib, "dnnl_primitive_create", &api.primitive_create, &missing);
    dnnl_sym(lib, "dnnl_primitive_execute", &api.execute, &missing);
    dnnl_sym(lib, "dnnl_memory_create", &api.memory_create, &missing);
    dnnl_sym(lib, "dnnl_memory_set_data_handle", &api.set_handle, &missing);
    dnnl_sym(lib, "dnnl_set_max_cpu_isa", &api.set_max_isa, &missing);
    dnnl_sym(lib, "dnnl_get_effective_cpu_isa", &api.effective_isa, &missing);
    dnnl_sym(lib, "dnnl_version", &api.version, &missing);
    if (!missing.empty()) {
      api.info = std::string(MD_DNNL_PATH) + " has no " + missing;
      return;
    }
    // before anything else runs in this copy: its own ISA limit, whatever ONEDNN_MAX_CPU_ISA says
    // (that variable is set for MindSpore's copy)
    api.set_max_isa(dnnl_cpu_isa_avx512_core_amx);
    if (api.engine_create(&api.engine, dnnl_cpu, 0) != dnnl_success ||
        api.stream_create(&api.stream, api.engine, dnnl_stream_default_flags) != dnnl_success) {
      api.info = "oneDNN could not create a CPU engine";
      return;
    }
    const dnnl_version_t *v = api.version();
    const int isa = static_cast<int>(api.effective_isa());
    const char *isa_name = isa == dnnl_cpu_isa_avx512_core_amx   ? "avx512_core_amx"
                           : isa == dnnl_cpu_isa_avx512_core_bf16 ? "avx512_core_bf16"
                           : isa == dnnl_cpu_isa_avx512_core_vnni ? "avx512_core_vnni"
                           : isa == dnnl_cpu_isa_avx512_core      ? "avx512_core"
                           : isa == dnnl_cpu_isa_avx2_vnni        ? "avx2_vnni"
                           : isa == dnnl_cpu_isa_avx2             ? "avx2"
                           : isa == dnnl_cpu_isa_avx              ? "avx"
                           : isa == dnnl_cpu_isa_sse41            ? "sse41"
                                                                  : "other";
    api.info = "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
               std::to_string(v->patch) + " (" + isa_name + ")";
    api.ok = true;
  });
  return api;
}

// one operand of a primitive: the user's tensor (plain layout, its pointer set at each run) and, when
// the primitive wants another layout, its copy in the arena and the reorder between them
struct Operand {
  int arg = 0;
  bool output = false;
  dnnl_memory_t user = nullptr, inner = nullptr;
  dnnl_primitive_t reorder = nullptr;
  size_t offset = 0;
};

struct Plan {
  dnnl_primitive_t primitive = nullptr;
  Operand ops[3];
  size_t arena = 0;  // bytes of blocked copies this plan needs
};

std::vector<char> &arena() {
  static std::vector<char> a;
  return a;
}

bool make_operand(DnnlApi &api, const_dnnl_memory_desc_t user_md, const_dnnl_memory_desc_t want, int arg,
                  bool output, Plan *plan, Operand *op) {
  op->arg = arg;
  op->output = output;
  if (api.memory_create(&op->user, user_md, api.engine, DNNL_MEMORY_NONE) != dnnl_success) return false;
  if (api.md_equal(user_md, want)) return true;
  if (api.memory_create(&op->inner, want, api.engine, DNNL_MEMORY_NONE) != dnnl_success) return false;
  dnnl_primitive_desc_t rpd = nullptr;
  const dnnl_status_t st = output ? api.reorder_pd(&rpd, want, api.engine, user_md, api.engine, nullptr)
                                  : api.reorder_pd(&rpd, user_md, api.engine, want, api.engine, nullptr);
  const bool made = st == dnnl_success && api.primitive_create(&op->reorder, rpd) == dnnl_success;
  if (rpd != nullptr) api.pd_destroy(rpd);
  if (!made) return false;
  op->offset = plan->arena;
  plan->arena += (api.md_size(want) + 63) / 64 * 64;
  return true;
}

// the descriptors a plan is made from, released when it is made (the primitives and memories keep copies)
struct PlanDescs {
  DnnlApi &api;
  dnnl_memory_desc_t md[6] = {nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
  dnnl_primitive_desc_t fwd = nullptr, bwd = nullptr;
  explicit PlanDescs(DnnlApi &a) : api(a) {}
  ~PlanDescs() {
    for (dnnl_memory_desc_t m : md)
      if (m != nullptr) api.md_destroy(m);
    if (fwd != nullptr) api.pd_destroy(fwd);
    if (bwd != nullptr) api.pd_destroy(bwd);
  }
};

// kind 0: forward (a = x, b = w, out = y); 1: input gradient (a = dy, b = w, out = dx); 2: weight
// gradient (a = dy, b = x, out = dw)
bool make_plan(DnnlApi &api, int kind, const Conv &c, Plan *plan) {
  const dnnl_dims_t xd = {c.N, c.C, c.H, c.W}, wd = {c.O, c.C, c.kh, c.kw}, yd = {c.N, c.O, c.Ho, c.Wo};
  const dnnl_dims_t strides = {c.sh, c.sw}, dil = {c.dh - 1, c.dw - 1}, pl = {c.pt, c.pl}, pr = {c.pb, c.pr};
  PlanDescs d(api);
  dnnl_memory_desc_t &xu = d.md[0], &wu = d.md[1], &yu = d.md[2], &xa = d.md[3], &wa = d.md[4], &ya = d.md[5];
  if (api.md_create(&xu, 4, xd, dnnl_f32, dnnl_nchw) || api.md_create(&wu, 4, wd, dnnl_f32, dnnl_oihw) ||
      api.md_create(&yu, 4, yd, dnnl_f32, dnnl_nchw) || api.md_create(&xa, 4, xd, dnnl_f32, dnnl_format_tag_any) ||
      api.md_create(&wa, 4, wd, dnnl_f32, dnnl_format_tag_any) ||
      api.md_create(&ya, 4, yd, dnnl_f32, dnnl_format_tag_any))
    return false;
  if (api.fwd_pd(&d.fwd, api.engine, dnnl_forward_training, dnnl_convolution_direct, xa, wa, nullptr, ya, strides,
                 dil, pl, pr, nullptr) != dnnl_success)
    return false;
  dnnl_primitive_desc_t pd = d.fwd;
  if (kind == 1 && api.bwd_data_pd(&d.bwd, api.engine, dnnl_convolution_direct, xa, wa, ya, strides, dil, pl, pr,
                                   d.fwd, nullptr) != dnnl_success)
    return false;
  if (kind == 2 && api.bwd_weights_pd(&d.bwd, api.engine, dnnl_convolution_direct, xa, wa, nullptr, ya, strides,
                                      dil, pl, pr, d.fwd, nullptr) != dnnl_success)
    return false;
  if (kind != 0) pd = d.bwd;
  // the operands in dnnl_conv's order (a, b, out): which plain descriptor, what the primitive calls it
  struct Port {
    const_dnnl_memory_desc_t user;
    dnnl_query_t query;
    int arg;
  };
  const Port ports[3][3] = {
      {{xu, dnnl_query_src_md, DNNL_ARG_SRC}, {wu, dnnl_query_weights_md, DNNL_ARG_WEIGHTS},
       {yu, dnnl_query_dst_md, DNNL_ARG_DST}},
      {{yu, dnnl_query_diff_dst_md, DNNL_ARG_DIFF_DST}, {wu, dnnl_query_weights_md, DNNL_ARG_WEIGHTS},
       {xu, dnnl_query_diff_src_md, DNNL_ARG_DIFF_SRC}},
      {{yu, dnnl_query_diff_dst_md, DNNL_ARG_DIFF_DST}, {xu, dnnl_query_src_md, DNNL_ARG_SRC},
       {wu, dnnl_query_diff_weights_md, DNNL_ARG_DIFF_WEIGHTS}}};
  for (int i = 0; i < 3; ++i) {
    const Port &port = ports[kind][i];
    if (!make_operand(api, port.user, api.query_md(pd, port.query, 0), port.arg, i == 2, plan, &plan->ops[i]))
      return false;
  }
  return api.primitive_create(&plan->primitive, pd) == dnnl_success;
}

bool dnnl_conv(int kind, const Conv &c, const float *a, const float *b, float *out) {
  DnnlApi &api = dnnl_api();
  if (!api.ok) return false;
  std::lock_guard<std::mutex> guard(g_dnnl_lock);
  static std::map<std::vector<int64_t>, Plan> plans;  // a failed plan stays, with no primitive
  const std::vector<int64_t> key = {kind, c.N, c.C, c.H, c.W, c.O, c.kh, c.kw, c.sh, c.sw,
                                    c.pt, c.pb, c.pl, c.pr, c.dh, c.dw};
  auto found = plans.find(key);
  if (found == plans.end()) {
    Plan plan;
    if (!make_plan(api, kind, c, &plan)) plan.primitive = nullptr;
    found = plans.emplace(key, plan).first;
  }
  Plan &plan = found->second;
  if (plan.primitive == nullptr) return false;
  std::vector<char> &mem = arena();
  if (mem.size() < plan.arena + 64) mem.resize(plan.arena + 64);
  char *base = reinterpret_cast<char *>((reinterpret_cast<uintptr_t>(mem.data()) + 63) / 64 * 64);
  void *handles[3] = {const_cast<float *>(a), const_cast<float *>(b), out};
  dnnl_exec_arg_t args[3];
  for (int i = 0; i < 3; ++i) {
    Operand &op = plan.ops[i];
    if (api.set_handle(op.user, handles[i]) != dnnl_success) return false;
    dnnl_memory_t used = op.user;
    if (op.inner != nullptr) {
      if (api.set_handle(op.inner, base + op.offset) != dnnl_success) return false;
      used = op.inner;
      if (!op.output) {
        dnnl_exec_arg_t r[2] = {{DNNL_ARG_FROM, op.user}, {DNNL_ARG_TO, op.inner}};
        if (api.execute(op.reorder, api.stream, 2, r) != dnnl_success) return false;
      }
    }
    args[i] = {op.arg, used};
  }
  if (api.execute(plan.primitive, api.stream, 3, args) != dnnl_success) return false;
  Operand &res = plan.ops[2];
  if (res.inner != nullptr) {
    dnnl_exec_arg_t r[2] = {{DNNL_ARG_FROM, res.inner}, {DNNL_ARG_TO, res.user}};
    if (api.execute(res.reorder, api.stream, 2, r) != dnnl_success) return false;
  }
  return api.stream_wait(api.stream) == dnnl_success;
}

}  // namespace

// "oneDNN 3.2.0 (avx512_core_amx)" when the convolutions above can run, else why not
extern "C" const char *MindDiffusionDnnlInfo() { return dnnl_api().info.c_str(); }

#else
namespace {
bool dnnl_conv(int, const Conv &, const float *, const float *, float *) { return false; }
}  // namespace

extern "C" const char *MindDiffusionDnnlInfo() { return "built without oneDNN"; }
#endif
