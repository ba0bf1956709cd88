/* nn.h — layer kernels (forward/backward pairs, llm.c style) and the embedding model.
 *
 * Conventions: row-major; a batch of vectors is (B, C); linear weights are (OC, C) as in
 * torch.nn.Linear (out = inp w^T + b). Backward kernels *accumulate* (+=) into parameter
 * gradients (dw, db) after one ft_model_zero_grad(), and *write* (=) input gradients (dinp).
 * Formulas and reference numbers: ../tests/fixtures/torch/README.md (PyTorch 1.13). */
#ifndef FT_NN_H
#define FT_NN_H

#include "ft_error.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* out (B, OC) = inp (B, C) @ w^T (w (OC, C)) + b (OC; NULL = no bias). sgemm. */
void ft_linear_forward(float *out, const float *inp, const float *w, const float *b, int B, int C,
                       int OC);
/* dinp (B, C) = dout (B, OC) @ w (written; NULL = skip), dw (OC, C) += dout^T @ inp,
 * db (OC) += column sums of dout (NULL = no bias). */
void ft_linear_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *w, int B, int C, int OC);

/* out (N) = max(inp, 0), element-wise over N values (out may alias inp). */
void ft_relu_forward(float *out, const float *inp, size_t N);
/* dinp (N) = dout where inp > 0 else 0 (written; dinp may alias dout). */
void ft_relu_backward(float *dinp, const float *dout, const float *inp, size_t N);

/* Row-wise L2 normalisation, F.normalize(p=2, dim=1, eps=1e-12):
 * out (B, D) = inp / max(||inp_i||, eps); norms (B) saves max(||inp_i||, eps) for backward. */
void ft_l2_normalize_forward(float *out, float *norms, const float *inp, int B, int D);
/* dinp_i (B, D) = (dout_i - out_i <out_i, dout_i>) / norms_i (written; may alias dout). */
void ft_l2_normalize_backward(float *dinp, const float *dout, const float *out, const float *norms,
                              int B, int D);

/* ---- the embedding model ---- */

#define FT_MLP_MAX_LAYERS 16

enum ft_activation { FT_ACT_NONE, FT_ACT_RELU };

/* Finetuner's MLP: Linear(input_size, hidden_sizes[0]) [act] Linear(.., hidden_sizes[1]) ...
 * with the activation between linear layers (not after the last), then optional L2
 * normalisation. Output dim = hidden_sizes[num_hidden - 1]. */
struct ft_mlp_config {
    int input_size;
    int num_hidden;
    int hidden_sizes[FT_MLP_MAX_LAYERS];
    int bias;                      /* 1 = linear layers have biases */
    enum ft_activation activation; /* between linear layers */
    int l2;                        /* 1 = L2-normalise the output */
};

/* Opaque model: parameters and gradients each in one contiguous buffer with a table of named
 * tensors; activation buffers grow to the largest batch seen. */
typedef struct ft_model ft_model;

/* New MLP with torch.nn.Linear's default init (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight
 * and bias) drawn from ft_rng seeded with seed. Errors: FT_EINVAL (param names the field:
 * "input_size", "hidden_sizes"), FT_ENOMEM. Free with ft_model_free(). */
enum ft_err ft_model_new_mlp(const struct ft_mlp_config *cfg, uint64_t seed, ft_model **out,
                             struct ft_error *err);
void ft_model_free(ft_model *m);

int ft_model_input_dim(const ft_model *m);
int ft_model_output_dim(const ft_model *m);
/* The parameter and gradient buffers (borrowed; num_params floats each). */
size_t ft_model_num_params(const ft_model *m);
float *ft_model_params(ft_model *m);
float *ft_model_grads(ft_model *m);
void ft_model_zero_grad(ft_model *m);

/* Named tensors inside the parameter buffer, for safetensors ("linear_0.weight" (OC, C),
 * "linear_0.bias" (OC), ...). Returns the count; view i via ft_model_tensor. */
int ft_model_num_tensors(const ft_model *m);
/* name (borrowed), ndim, shape, offset (floats from ft_model_params()). */
void ft_model_tensor(const ft_model *m, int i, const char **name, int *ndim, int64_t shape[2],
                     size_t *offset);

/* The model's config as JSON ({"name": "mlp", "input_size", "hidden_sizes", "bias",
 * "activation", "l2"}). New reference. */
json_t *ft_model_config_json(const ft_model *m);

/* out (B, out_dim) = model(x (B, in_dim)). Saves the activations for ft_model_backward.
 * Errors: FT_ENOMEM (growing the activation buffers). */
enum ft_err ft_model_forward(ft_model *m, const float *x, int B, float *out);
/* Gradients of sum(out * dout) w.r.t. the parameters, accumulated into ft_model_grads(), using
 * the activations of the last ft_model_forward (same B). dout (B, out_dim). */
void ft_model_backward(ft_model *m, const float *dout, int B);

#endif
