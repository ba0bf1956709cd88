/* test_runspec.c — the run config: defaults, normalisation, and a 400 naming the field for
 * every kind of bad input. */
#include "runspec.h"

#include <criterion/criterion.h>
#include <string.h>

static enum ft_err parse(const char *text, struct ft_run_config *c, json_t **norm,
                         struct ft_error *err)
{
    json_error_t jerr;
    json_t *cfg = json_loads(text, 0, &jerr);
    cr_assert_not_null(cfg, "bad test JSON: %s", jerr.text);
    enum ft_err e = ft_run_config_parse(cfg, c, norm, err);
    json_decref(cfg);
    return e;
}

/* Parse text, expect FT_EINVAL with param. */
static void expect_invalid(const char *text, const char *param)
{
    struct ft_run_config c;
    struct ft_error err = {0};
    cr_assert_eq(parse(text, &c, NULL, &err), FT_EINVAL, "accepted: %s", text);
    cr_assert_str_eq(err.param, param, "for %s: message %s", text, err.message);
    cr_assert(strlen(err.message) > 0);
}

#define MINIMAL "{\"model\": {\"name\": \"mlp\"}, \"data\": {\"train_data\": \"tr\"}"

Test(runspec, defaults_are_finetuners)
{
    struct ft_run_config c;
    struct ft_error err;
    json_t *norm;
    cr_assert_eq(parse(MINIMAL "}", &c, &norm, &err), FT_OK, "%s", err.message);
    cr_assert_str_eq(c.loss, "TripletMarginLoss");
    cr_assert_str_eq(c.optimizer, "Adam");
    cr_assert_eq(c.optim.kind, FT_OPTIM_ADAM);
    cr_assert_float_eq(c.learning_rate, 1e-3, 1e-15);
    cr_assert_eq(c.epochs, 5);
    cr_assert_eq(c.batch_size, 0, "auto: chosen from the data");
    cr_assert_str_eq(c.sampler, "auto");
    cr_assert_eq(c.num_items_per_class, 4);
    cr_assert_eq(c.seed, 42);
    cr_assert_str_eq(c.miner, "");
    cr_assert(json_is_null(c.miner_options));
    cr_assert_float_eq(json_number_value(json_object_get(c.loss_options, "margin")), 0.05, 1e-12,
                       "pytorch-metric-learning's default margin");
    json_t *hp = json_object_get(norm, "hyper_parameters");
    cr_assert_str_eq(json_string_value(json_object_get(hp, "optimizer")), "Adam");
    cr_assert_eq(json_integer_value(json_object_get(hp, "epochs")), 5);
    cr_assert(json_is_null(json_object_get(hp, "miner")));
    cr_assert(json_is_array(json_object_get(norm, "callbacks")));
    cr_assert(json_is_null(json_object_get(hp, "batch_size")));
    cr_assert(json_is_null(json_object_get(hp, "scheduler")));
    json_t *oo = json_object_get(hp, "optimizer_options");
    cr_assert_float_eq(json_number_value(json_array_get(json_object_get(oo, "betas"), 1)), 0.999,
                       1e-12);
    json_decref(norm);
    ft_run_config_clear(&c);
}

Test(runspec, full_config_parses)
{
    struct ft_run_config c;
    struct ft_error err;
    const char *text =
        "{\"model\": {\"name\": \"mlp\", \"options\": {\"input_size\": 784, \"hidden_sizes\": "
        "[256, 128], \"activation\": \"relu\", \"l2\": true, \"bias\": false}},"
        "\"data\": {\"train_data\": \"tr\", \"eval_data\": \"te\", \"num_items_per_class\": 8},"
        "\"hyper_parameters\": {\"loss\": \"TripletMarginLoss\", \"loss_options\": {\"margin\": "
        "0.2, \"distance\": \"cosine\"}, \"miner\": \"TripletMarginMiner\", \"miner_options\": "
        "{\"type_of_triplets\": \"semihard\", \"margin\": 0.3}, \"optimizer\": \"SGD\", "
        "\"optimizer_options\": {\"momentum\": 0.9, \"nesterov\": true}, \"learning_rate\": "
        "0.01, \"epochs\": 3, \"batch_size\": 64},"
        "\"callbacks\": [{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": "
        "\"te\"}}, {\"name\": \"EarlyStopping\", \"options\": {\"monitor\": "
        "\"mlp_precision_at_k\"}}], \"seed\": 7}";
    cr_assert_eq(parse(text, &c, NULL, &err), FT_OK, "%s (%s)", err.message, err.param);
    json_t *hs = json_object_get(c.model_options, "hidden_sizes");
    cr_assert_eq(json_array_size(hs), 2);
    cr_assert_eq(json_integer_value(json_array_get(hs, 1)), 128);
    cr_assert(json_is_true(json_object_get(c.model_options, "l2")));
    cr_assert(json_is_false(json_object_get(c.model_options, "bias")));
    cr_assert_eq(json_integer_value(json_object_get(c.model_options, "input_size")), 784);
    cr_assert_str_eq(json_string_value(json_object_get(c.loss_options, "distance")), "cosine");
    cr_assert_str_eq(c.miner, "TripletMarginMiner");
    cr_assert_str_eq(json_string_value(json_object_get(c.miner_options, "type_of_triplets")),
                     "semihard");
    cr_assert_float_eq(json_number_value(json_object_get(c.miner_options, "margin")), 0.3, 1e-12);
    cr_assert_eq(c.optim.kind, FT_OPTIM_SGD);
    cr_assert_eq(c.optim.nesterov, 1);
    cr_assert_eq(c.seed, 7);
    cr_assert_eq(c.callbacks.num_eval, 1);
    cr_assert_eq(c.callbacks.early_stopping.mode, FT_MODE_MAX);
    const char *names[8];
    cr_assert_eq(ft_run_config_datasets(&c, names, 8), 2);
    ft_run_config_clear(&c);
}

Test(runspec, bad_input_names_the_field)
{
    expect_invalid("[]", "config");
    expect_invalid("{\"data\": {\"train_data\": \"tr\"}}", "config.model");
    expect_invalid(MINIMAL ", \"extra\": 1}", "config.extra");
    expect_invalid("{\"model\": {\"name\": \"resnet\"}, \"data\": {\"train_data\": \"tr\"}}",
                   "config.model.name");
    expect_invalid("{\"model\": {\"name\": \"mlp\", \"options\": {\"hidden\": [1]}}, \"data\": "
                   "{\"train_data\": \"tr\"}}",
                   "config.model.options.hidden");
    expect_invalid("{\"model\": {\"name\": \"mlp\", \"options\": {\"hidden_sizes\": [0]}}, "
                   "\"data\": {\"train_data\": \"tr\"}}",
                   "config.model.options.hidden_sizes");
    expect_invalid("{\"model\": {\"name\": \"mlp\"}, \"data\": {}}", "config.data.train_data");
    expect_invalid("{\"model\": {\"name\": \"mlp\"}, \"data\": {\"train_data\": 3}}",
                   "config.data.train_data");
    expect_invalid(MINIMAL ", \"hyper_parameters\": {\"epoch\": 3}}",
                   "config.hyper_parameters.epoch");
    expect_invalid(MINIMAL ", \"hyper_parameters\": {\"epochs\": \"5\"}}",
                   "config.hyper_parameters.epochs");
    expect_invalid(MINIMAL ", \"hyper_parameters\": {\"epochs\": 0}}",
                   "config.hyper_parameters.epochs");
    expect_invalid(MINIMAL ", \"hyper_parameters\": {\"learning_rate\": -1}}",
                   "config.hyper_parameters.learning_rate");
    expect_invalid(MINIMAL ", \"hyper_parameters\": {\"loss\": \"FooLoss\"}}",
                   "config.hyper_parameters.loss");
    expect_invalid(MINIMAL ", \"hyper_parameters\": {\"optimizer\": \"Lion\"}}",
                   "config.hyper_parameters.optimizer");
    expect_invalid(MINIMAL ", \"hyper_parameters\": {\"loss_options\": {\"swapp\": true}}}",
                   "config.hyper_parameters.loss_options.swapp");
    expect_invalid(MINIMAL ", \"hyper_parameters\": {\"batch_size\": 30}}",
                   "config.hyper_parameters.batch_size");
    expect_invalid(MINIMAL ", \"hyper_parameters\": {\"miner_options\": {\"margin\": 0.1}}}",
                   "config.hyper_parameters.miner_options");
    expect_invalid(MINIMAL ", \"seed\": -1}", "config.seed");
    expect_invalid(MINIMAL ", \"callbacks\": [{\"name\": \"Foo\"}]}", "config.callbacks[0].name");
    expect_invalid(MINIMAL ", \"callbacks\": [{\"name\": \"EarlyStopping\", \"options\": "
                           "{\"min_delta\": -1, \"monitor\": \"train_loss\"}}]}",
                   "config.callbacks[0].options.min_delta");
}

Test(runspec, monitors_must_have_a_series)
{
    /* val_loss without eval data or val_split cannot exist */
    expect_invalid(MINIMAL ", \"callbacks\": [{\"name\": \"EarlyStopping\"}]}",
                   "config.callbacks[0].options.monitor");
    /* a metric without an EvaluationCallback cannot exist */
    expect_invalid(MINIMAL ", \"callbacks\": [{\"name\": \"BestModelCheckpoint\", \"options\": "
                           "{\"monitor\": \"mlp_ndcg_at_k\"}}]}",
                   "config.callbacks[0].options.monitor");
    struct ft_run_config c;
    struct ft_error err;
    cr_assert_eq(parse("{\"model\": {\"name\": \"mlp\"}, \"data\": {\"train_data\": \"tr\", "
                       "\"val_split\": 0.1}, \"callbacks\": [{\"name\": \"EarlyStopping\"}]}",
                       &c, NULL, &err),
                 FT_OK, "%s", err.message);
    ft_run_config_clear(&c);
}

Test(runspec, scheduler_sampler_standardize_adamw)
{
    struct ft_run_config c;
    struct ft_error err;
    json_t *norm;
    cr_assert_eq(parse("{\"model\": {\"name\": \"mlp\"}, \"hyper_parameters\": {\"optimizer\": "
                       "\"AdamW\", \"scheduler\": "
                       "\"linear\", \"scheduler_options\": {\"num_warmup_steps\": 10}, "
                       "\"batch_size\": 64}, \"data\": {\"train_data\": \"tr\", \"sampler\": "
                       "\"random\", \"standardize\": {\"mean\": 0.286, \"std\": 0.353}}}",
                       &c, &norm, &err),
                 FT_OK, "%s (%s)", err.message, err.param);
    cr_assert_eq(c.optim.kind, FT_OPTIM_ADAMW);
    cr_assert_float_eq(c.optim.weight_decay, 0.01, 1e-12);
    cr_assert_str_eq(c.scheduler, "linear");
    cr_assert_str_eq(c.sampler, "random");
    cr_assert_eq(c.standardize, 1);
    cr_assert_float_eq(c.standardize_std, 0.353, 1e-12);
    json_t *hp = json_object_get(norm, "hyper_parameters");
    cr_assert_str_eq(json_string_value(json_object_get(hp, "scheduler")), "linear");
    cr_assert_eq(json_integer_value(
                     json_object_get(json_object_get(hp, "scheduler_options"), "num_warmup_steps")),
                 10);
    json_decref(norm);
    ft_run_config_clear(&c);
    expect_invalid(MINIMAL ", \"hyper_parameters\": {\"scheduler\": \"step\"}}",
                   "config.hyper_parameters.scheduler");
    expect_invalid(MINIMAL ", \"hyper_parameters\": {\"optimizer\": \"Adam\", "
                           "\"optimizer_options\": {\"amsgrad\": true}}}",
                   "config.hyper_parameters.optimizer_options.amsgrad");
    expect_invalid("{\"model\": {\"name\": \"mlp\"}, \"data\": {\"train_data\": \"tr\", "
                   "\"sampler\": \"balanced\"}}",
                   "config.data.sampler");
    expect_invalid("{\"model\": {\"name\": \"mlp\"}, \"data\": {\"train_data\": \"tr\", "
                   "\"standardize\": {\"mean\": 0.5}}}",
                   "config.data.standardize");
}

Test(runspec, losses_miners_and_loss_optimizer)
{
    struct ft_run_config c;
    struct ft_error err;
    json_t *norm;
    cr_assert_eq(parse(MINIMAL ", \"hyper_parameters\": {\"loss\": \"ArcFaceLoss\", "
                               "\"loss_options\": {\"scale\": 32}, \"loss_optimizer\": \"SGD\", "
                               "\"loss_optimizer_options\": {\"momentum\": 0.9}}}",
                       &c, &norm, &err),
                 FT_OK, "%s (%s)", err.message, err.param);
    cr_assert_eq(c.loss_optim.kind, FT_OPTIM_SGD);
    json_t *hp = json_object_get(norm, "hyper_parameters");
    cr_assert_str_eq(json_string_value(json_object_get(hp, "loss_optimizer")), "SGD");
    json_decref(norm);
    ft_run_config_clear(&c);
    cr_assert_eq(parse(MINIMAL ", \"hyper_parameters\": {\"loss\": \"CLIPLoss\"}}", &c, NULL, &err),
                 FT_OK, "%s", err.message);
    cr_assert_eq(c.num_items_per_class, 2, "CLIPLoss learns from pairs");
    ft_run_config_clear(&c);
    expect_invalid(MINIMAL ", \"hyper_parameters\": {\"loss\": \"CLIPLoss\", \"miner\": "
                           "\"TripletMarginMiner\"}}",
                   "config.hyper_parameters.miner");
    expect_invalid(MINIMAL ", \"hyper_parameters\": {\"loss\": \"ContrastiveLoss\", "
                           "\"loss_options\": {\"margin\": 1}}}",
                   "config.hyper_parameters.loss_options.margin");
    expect_invalid(MINIMAL ", \"hyper_parameters\": {\"loss\": \"ArcFaceLoss\", "
                           "\"loss_optimizer_options\": {\"momentum\": 0.9}}}",
                   "config.hyper_parameters.loss_optimizer_options");
    expect_invalid(MINIMAL ", \"hyper_parameters\": {\"loss\": \"ArcFaceLoss\", "
                           "\"loss_optimizer\": \"Adam\", \"loss_optimizer_options\": "
                           "{\"momentum\": 0.9}}}",
                   "config.hyper_parameters.loss_optimizer_options.momentum");
    expect_invalid("{\"model\": {\"name\": \"mlp\"}, \"data\": {\"train_data\": \"tr\", "
                   "\"num_items_per_class\": 4}, \"hyper_parameters\": {\"loss\": \"CLIPLoss\"}}",
                   "config.data.num_items_per_class");
}

Test(runspec, artifact_and_wiseft)
{
    struct ft_run_config c;
    struct ft_error err;
    cr_assert_eq(parse("{\"model\": {\"artifact\": \"exp/run-1\"}, \"data\": {\"train_data\": "
                       "\"tr\"}, \"callbacks\": [{\"name\": \"WiSEFTCallback\"}]}",
                       &c, NULL, &err),
                 FT_OK, "%s", err.message);
    cr_assert_str_eq(c.model_artifact, "exp/run-1");
    cr_assert_str_eq(c.model_name, "", "the server takes the name from the artifact");
    ft_run_config_clear(&c);
    expect_invalid("{\"model\": {\"artifact\": \"no-slash\"}, \"data\": {\"train_data\": \"tr\"}}",
                   "config.model.artifact");
    expect_invalid(MINIMAL ", \"callbacks\": [{\"name\": \"WiSEFTCallback\"}]}",
                   "config.callbacks");
    expect_invalid("{\"model\": {\"artifact\": \"e/r\", \"options\": {\"l2\": true}}, \"data\": "
                   "{\"train_data\": \"tr\"}}",
                   "config.model.options");
}

/* Found by fuzzing (tests/fuzz/fuzz_runspec.c): "config." is put before a callback's param with
 * "%.119s", which could cut a character in two and leave a param that no JSON string (and so
 * no 400 body) can hold. The cut byte is now '?'. */
Test(runspec, prefixed_param_cut_inside_a_character_is_valid_utf8)
{
    struct ft_run_config c;
    struct ft_error err;
    char key[128], text[512];
    memset(key, 'h', 97); /* "callbacks[0].options." is 21 bytes: the cut falls after 0xc3 */
    memcpy(key + 97, "\xc3\xa9xyz", 6);
    snprintf(text, sizeof text,
             MINIMAL ", \"callbacks\": [{\"name\": \"EvaluationCallback\", \"options\": "
                     "{\"query_data\": \"tr\", \"%s\": 1}}]}",
             key);
    cr_assert_eq(parse(text, &c, NULL, &err), FT_EINVAL);
    cr_assert_eq(strncmp(err.param, "config.callbacks[0].options.hhh", 31), 0, "%s", err.param);
    cr_assert_eq(strlen(err.param), 7 + 119);
    cr_assert_eq(err.param[125], '?');
    json_t *p = json_string(err.param);
    cr_assert_not_null(p, "the param is valid UTF-8");
    json_decref(p);
}
