/* fuzz_runspec.c — the run-config parser and validator on arbitrary JSON text.
 *
 * Input: JSON text (json_loadb). Every document goes through ft_run_config_parse(); a config
 * that parses is then checked the way the server and the worker use it: its dataset names,
 * its monitors, and its normalised form, which the API stores and the worker parses again —
 * so the normalised config must parse too and normalise to itself. */
#include "runspec.h"

#include "fuzz_common.h"

#include <jansson.h>

/* The worker parses the stored normalised config: it must parse and be a fixed point. The API
 * fills model.name from the artifact before storing, so configs with an artifact (model name
 * "" here) are skipped. */
static void check_normalized(const struct ft_run_config *cfg, json_t *norm)
{
    struct ft_run_config again;
    struct ft_error err = {0};
    json_t *norm2 = NULL;
    if (cfg->model_artifact[0])
        return;
    char *text = json_dumps(norm, JSON_COMPACT);
    FZ_CHECK(text);
    json_t *reloaded = json_loads(text, 0, NULL);
    FZ_CHECK(reloaded);
    enum ft_err e = ft_run_config_parse(reloaded, &again, &norm2, &err);
    if (e != FT_OK)
        fprintf(stderr, "normalised config rejected: %s (%s)\n%s\n", err.message, err.param, text);
    FZ_CHECK(e == FT_OK);
    FZ_CHECK(json_equal(norm, norm2));
    ft_run_config_clear(&again);
    json_decref(norm2);
    json_decref(reloaded);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ft_run_config cfg;
    struct ft_error err = {0};
    json_t *norm = NULL;
    json_t *config = json_loadb((const char *)data, size, 0, NULL);
    if (!config)
        return 0;
    enum ft_err e = ft_run_config_parse(config, &cfg, &norm, &err);
    if (e != FT_OK) {
        FZ_CHECK(norm == NULL);
        FZ_CHECK(fz_error_ok(&err, e));
        json_decref(config);
        return 0;
    }
    FZ_CHECK(norm != NULL);
    const char *names[16];
    int n = ft_run_config_datasets(&cfg, names, 16);
    FZ_CHECK(n >= 1 && n <= 16 && strcmp(names[0], cfg.train_data) == 0);
    FZ_CHECK(ft_run_config_check_monitors(&cfg, config, &err) == FT_OK);
    check_normalized(&cfg, norm);
    ft_run_config_clear(&cfg);
    json_decref(norm);
    json_decref(config);
    return 0;
}
