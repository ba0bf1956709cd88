/* model.h — embedding models as a stack of layers (the kernels are in nn.h).
 *
 * A model is built from its config JSON, the object the run config's "model" section and the
 * artifact's "model_config" metadata both hold:
 *   {"name": "mlp" | "cnn", "options": {...}, "output_dim": int | null,
 *    "input_shape": [D] | [C, H, W]}
 * name/options follow Finetuner (see ft_model_check_options for every option and default);
 * output_dim appends a linear projection head (and moves the L2 normalisation after it);
 * input_shape is filled from the training data when absent. Other keys ("freeze") are ignored.
 *
 * The stacks (defaults in brackets):
 *  - mlp {input_size [data], hidden_sizes [[256, 128]], bias [true], activation
 *    relu|gelu|gelu_tanh|tanh|sigmoid|none|null [relu], l2 [false], batch_norm [false],
 *    dropout [0]}: linear_i, then for every hidden layer but the last: [bn_i (BatchNorm1d)],
 *    activation, [dropout].
 *  - cnn {input_shape [C, H, W; data], channels [[32, 64]], kernel_size (odd) [3], batch_norm
 *    [true], pooling max|avg|none [max], activation [relu], embedding_dim [128], l2 [true],
 *    dropout [0]}: per stage i conv_i (k x k, stride 1, padding k/2; a bias only without batch
 *    norm), [bn_i (BatchNorm2d)], activation, [2x2 pooling]; then global average pooling,
 *    [dropout], proj (linear to embedding_dim).
 *  - then [head (linear to output_dim)], [L2 normalisation].
 * gelu is the exact erf form (torch's default), gelu_tanh the tanh approximation; an explicit
 * null activation or pooling means none. Batch norm: momentum 0.1, eps 1e-5.
 *
 * Memory: one contiguous parameter buffer, one gradient buffer of the same layout, one buffer
 * array (batch-norm running statistics: saved and loaded, never trained) and activation
 * buffers that grow to the largest batch seen. Every tensor has a name
 * ("linear_0.weight", "conv_0.weight", "bn_0.running_mean", "head.weight", ...) used in
 * safetensors artifacts. */
#ifndef FT_MODEL_H
#define FT_MODEL_H

#include "ft_error.h"
#include "safetensors.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ft_model ft_model;

/* Check name and options (borrowed; NULL = all defaults) for a model and return in *normalized
 * (new reference, may be NULL when not wanted) the options with every default filled in.
 * Errors: FT_EINVAL with param "config.model.name" or "config.model.options.<key>" (unknown
 * key, wrong type, out of range). No data needed: this runs at submission. */
enum ft_err ft_model_check_options(const char *name, json_t *options, json_t **normalized,
                                   struct ft_error *err);

/* Build a model from its config (borrowed, see above). input_shape (C, H, W) of the data: for
 * vector data C = H = 1 and W = dims (mlp flattens anything; cnn needs C*H*W = dims and an image
 * shape, taken from options.input_shape, else config.input_shape, else the dataset's
 * image_shape). input_shape NULL = no data: the config's input_shape (or options.input_size /
 * options.input_shape) must give it, as in an artifact's model_config. Weights are initialised
 * as PyTorch does (nn.Linear / nn.Conv2d default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)); batch and
 * layer norm weight 1, bias 0; running mean 0, var 1) from ft_rng seeded with seed, layer by
 * layer, weight then bias; dropout draws from its own generator (seed-derived). Errors:
 * FT_EINVAL (param as in ft_model_check_options; "config.model.options.input_size" or
 * ".input_shape" when the data disagrees or a cnn has no image shape;
 * "config.model.options.channels" when pooling shrinks the image to nothing;
 * "config.model.output_dim", "config.model.input_shape"), FT_ENOMEM. Free with
 * ft_model_free(). */
enum ft_err ft_model_new(json_t *config, const int input_shape[3], uint64_t seed, ft_model **out,
                         struct ft_error *err);
void ft_model_free(ft_model *m);

/* Build the model an artifact describes (its "model_config" metadata, see
 * ft_model_config_json) and load its tensors (ft_model_load). Errors: FT_EINVAL (param
 * "model_config" when the metadata is missing or not JSON, else as ft_model_new / ft_model_load),
 * FT_ENOMEM. Free with ft_model_free(). */
enum ft_err ft_model_from_safetensors(const ft_safetensors *st, ft_model **out,
                                      struct ft_error *err);

/* The config the model was built from, normalised (options with defaults, input_shape
 * filled). New reference. */
json_t *ft_model_config_json(const ft_model *m);

int ft_model_input_dim(const ft_model *m);  /* C*H*W */
int ft_model_output_dim(const ft_model *m); /* embedding size */

/* Parameters and gradients (borrowed; ft_model_num_params floats each). */
size_t ft_model_num_params(const ft_model *m);
float *ft_model_params(ft_model *m);
float *ft_model_grads(ft_model *m);
void ft_model_zero_grad(ft_model *m);
/* First parameter of the projection head (the parameters from there on are the head);
 * num_params when there is no head. freeze trains only [head_offset, num_params). */
size_t ft_model_head_offset(const ft_model *m);
/* The non-trained buffers (batch-norm running statistics; borrowed; ft_model_num_buffers
 * floats, possibly 0), e.g. to keep them with a checkpoint's parameters. */
size_t ft_model_num_buffers(const ft_model *m);
float *ft_model_buffers(ft_model *m);

/* Named tensors, parameters first then buffers. For tensor i: name (borrowed), ndim (<= 4),
 * shape, data (borrowed pointer into the parameter or buffer array), trainable (1 =
 * parameter, 0 = buffer such as bn_0.running_var). */
int ft_model_num_tensors(const ft_model *m);
void ft_model_tensor(const ft_model *m, int i, const char **name, int *ndim, int64_t shape[4],
                     float **data, int *trainable);

/* Copy every tensor of the model (parameters and buffers) from st by name, e.g. to start a run
 * from an earlier artifact (extra tensors in st are ignored). Errors: FT_EINVAL with param =
 * the tensor's name when it is missing, not F32 or of another shape; nothing is copied then. */
enum ft_err ft_model_load(ft_model *m, const ft_safetensors *st, struct ft_error *err);

/* The model's own input buffer for a batch of B rows ((B, input_dim) floats, borrowed: valid
 * until a call with a larger B or ft_model_free). Fill it and pass it as x to
 * ft_model_forward, which then has nothing to copy. NULL on ENOMEM. */
float *ft_model_input(ft_model *m, int B);

/* out (B, output_dim) = model(x (B, input_dim)). training = 1: batch norm uses batch
 * statistics and updates its running ones, dropout drops (seeded); training = 0: inference
 * (running statistics, no dropout). Either way the activations are saved for
 * ft_model_backward. B may change from call to call; buffers grow to the largest B (nothing is
 * allocated after that). Errors: FT_ENOMEM (growing the activation buffers). */
enum ft_err ft_model_forward(ft_model *m, const float *x, int B, float *out, int training);

/* Gradients of sum(out * dout) w.r.t. the parameters, accumulated into ft_model_grads(),
 * from the activations of the last forward (same B) and in its mode: after training = 0 the
 * gradient of the inference function (batch norm with running statistics, no dropout), e.g.
 * for frozen statistics. dout (B, output_dim). */
void ft_model_backward(ft_model *m, const float *dout, int B);

/* The dropout generator state (for checkpoints): 4 words, borrowed. */
uint64_t *ft_model_rng_state(ft_model *m);

#endif
