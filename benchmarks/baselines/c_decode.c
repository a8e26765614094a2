// A same-machine C baseline for `tinyllama bench generate`: one decode step of a LLaMA-shaped f32 model
// written the way llama2.c's run.c writes it (a plain dot-product matmul parallelised over output rows
// with OpenMP, RMSNorm, RoPE, attention over a KV cache, SwiGLU, the classifier), with random weights.
// It exists to answer "how fast can f32 decoding be on this machine?" without llama2.c or llama.cpp,
// which cannot be installed here. Written for this project; shapes match the presets.
//
//   gcc -Ofast -march=native -fopenmp -o c_decode c_decode.c -lm
//   OMP_NUM_THREADS=2 ./c_decode 288 768 6 6 6 32000 128 128      # stories15M: dim hidden layers heads kv vocab prompt tokens
//   OMP_NUM_THREADS=2 ./c_decode 768 2048 12 12 12 32000 128 128   # stories110M
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static float *alloc_random(size_t n, unsigned *seed) {
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) { *seed = *seed * 1664525u + 1013904223u; p[i] = ((*seed >> 9) / 8388608.0f - 0.5f) * 0.04f; }
    return p;
}

// y[d] = W[d, n] x[n]
static void matmul(float *y, const float *x, const float *w, int n, int d) {
    int i;
#pragma omp parallel for private(i)
    for (i = 0; i < d; i++) {
        float s = 0.0f;
        for (int j = 0; j < n; j++) s += w[(size_t)i * n + j] * x[j];
        y[i] = s;
    }
}

static void rmsnorm(float *o, const float *x, const float *w, int n) {
    float ss = 0.0f;
    for (int j = 0; j < n; j++) ss += x[j] * x[j];
    ss = 1.0f / sqrtf(ss / n + 1e-5f);
    for (int j = 0; j < n; j++) o[j] = w[j] * (ss * x[j]);
}

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

int main(int argc, char **argv) {
    if (argc != 9) { fprintf(stderr, "usage: c_decode dim hidden layers heads kv_heads vocab prompt_tokens new_tokens\n"); return 2; }
    int dim = atoi(argv[1]), hidden = atoi(argv[2]), layers = atoi(argv[3]), heads = atoi(argv[4]), kvh = atoi(argv[5]), vocab = atoi(argv[6]);
    int prompt = atoi(argv[7]), ntok = atoi(argv[8]), seq = prompt + ntok, hs = dim / heads, kvdim = kvh * hs;
    unsigned seed = 1;
    float *emb = alloc_random((size_t)vocab * dim, &seed);
    float **wq = malloc(layers * sizeof(float *)), **wk = malloc(layers * sizeof(float *)), **wv = malloc(layers * sizeof(float *)), **wo = malloc(layers * sizeof(float *));
    float **w1 = malloc(layers * sizeof(float *)), **w2 = malloc(layers * sizeof(float *)), **w3 = malloc(layers * sizeof(float *));
    float *norms = malloc(sizeof(float) * dim);
    for (int j = 0; j < dim; j++) norms[j] = 1.0f;
    for (int l = 0; l < layers; l++) {
        wq[l] = alloc_random((size_t)dim * dim, &seed); wk[l] = alloc_random((size_t)kvdim * dim, &seed); wv[l] = alloc_random((size_t)kvdim * dim, &seed);
        wo[l] = alloc_random((size_t)dim * dim, &seed); w1[l] = alloc_random((size_t)hidden * dim, &seed); w2[l] = alloc_random((size_t)dim * hidden, &seed);
        w3[l] = alloc_random((size_t)hidden * dim, &seed);
    }
    float *kc = calloc((size_t)layers * seq * kvdim, sizeof(float)), *vc = calloc((size_t)layers * seq * kvdim, sizeof(float));
    float *x = malloc(dim * 4), *xb = malloc(dim * 4), *xb2 = malloc(dim * 4), *q = malloc(dim * 4), *hb = malloc(hidden * 4), *hb2 = malloc(hidden * 4);
    float *att = malloc((size_t)heads * seq * 4), *logits = malloc((size_t)vocab * 4);
    double start = 0;
    for (int pos = 0; pos < seq; pos++) {
        if (pos == prompt) start = now();
        memcpy(x, emb + (size_t)((pos * 7919) % vocab) * dim, dim * 4);
        for (int l = 0; l < layers; l++) {
            rmsnorm(xb, x, norms, dim);
            float *k = kc + ((size_t)l * seq + pos) * kvdim, *v = vc + ((size_t)l * seq + pos) * kvdim;
            matmul(q, xb, wq[l], dim, dim);
            matmul(k, xb, wk[l], dim, kvdim);
            matmul(v, xb, wv[l], dim, kvdim);
            for (int i = 0; i < dim; i += 2) {
                float f = 1.0f / powf(10000.0f, (i % hs) / (float)hs), c = cosf(pos * f), s = sinf(pos * f);
                float q0 = q[i], q1 = q[i + 1];
                q[i] = q0 * c - q1 * s; q[i + 1] = q0 * s + q1 * c;
                if (i < kvdim) { float k0 = k[i], k1 = k[i + 1]; k[i] = k0 * c - k1 * s; k[i + 1] = k0 * s + k1 * c; }
            }
            int h;
#pragma omp parallel for private(h)
            for (h = 0; h < heads; h++) {
                float *qh = q + h * hs, *a = att + (size_t)h * seq, mx = -1e30f, sum = 0.0f;
                int g = h / (heads / kvh);
                for (int t = 0; t <= pos; t++) {
                    float *kt = kc + ((size_t)l * seq + t) * kvdim + g * hs, s = 0.0f;
                    for (int i = 0; i < hs; i++) s += qh[i] * kt[i];
                    a[t] = s / sqrtf(hs);
                    if (a[t] > mx) mx = a[t];
                }
                for (int t = 0; t <= pos; t++) { a[t] = expf(a[t] - mx); sum += a[t]; }
                float *o = xb + h * hs;
                memset(o, 0, hs * 4);
                for (int t = 0; t <= pos; t++) {
                    float *vt = vc + ((size_t)l * seq + t) * kvdim + g * hs, w = a[t] / sum;
                    for (int i = 0; i < hs; i++) o[i] += w * vt[i];
                }
            }
            matmul(xb2, xb, wo[l], dim, dim);
            for (int i = 0; i < dim; i++) x[i] += xb2[i];
            rmsnorm(xb, x, norms, dim);
            matmul(hb, xb, w1[l], dim, hidden);
            matmul(hb2, xb, w3[l], dim, hidden);
            for (int i = 0; i < hidden; i++) hb[i] = hb[i] / (1.0f + expf(-hb[i])) * hb2[i];
            matmul(xb, hb, w2[l], hidden, dim);
            for (int i = 0; i < dim; i++) x[i] += xb[i];
        }
        rmsnorm(x, x, norms, dim);
        matmul(logits, x, emb, dim, vocab);
    }
    double secs = now() - start;
    printf("{\"decode_tokens_per_second\": %.2f}\n", ntok / secs);
    return 0;
}
