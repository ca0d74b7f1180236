/* `{{name}}`: sets `greeting` from `name` (default "world"). */
#include <stdio.h>

#include "weir.h"

void exports_weir_processor_handler_describe(weir_metadata_t *ret) {
    weir_describe(ret, "{{name}}", "0.1.0", "Greets `name`.", 1000);
}

bool exports_weir_processor_handler_process(weir_json_t *state, weir_context_t *context,
                                            weir_json_t *ret, weir_error_t *err) {
    size_t len = 0;
    char *name = weir_json_get_string(state, "name", &len);
    bool ok;
    if (name != NULL && len == 0) {
        ok = weir_fail(err, WEIR_PROCESSOR_TYPES_ERROR_KIND_VALIDATION, "blank-name",
                       "`name` must be a non-blank string");
    } else {
        /* A real processor escapes what it embeds in JSON; this one only accepts plain names. */
        const char *who = name != NULL ? name : "world";
        size_t size = strlen(who) + 16;
        char *greeting = malloc(size);
        bool plain = greeting != NULL && strpbrk(who, "\"\\") == NULL;
        if (plain) snprintf(greeting, size, "\"Hello, %s!\"", who);
        ok = plain ? (weir_state_with(state, "greeting", greeting, ret) ||
                      weir_fail(err, WEIR_PROCESSOR_TYPES_ERROR_KIND_VALIDATION, "not-an-object",
                                "the state must be a JSON object"))
                   : weir_fail(err, WEIR_PROCESSOR_TYPES_ERROR_KIND_VALIDATION, "unsupported-name",
                               "`name` must not contain quotes or backslashes");
        free(greeting);
        weir_log(WEIR_PROCESSOR_LOGGING_LEVEL_INFO, "greeting");
    }
    free(name);
    weir_free_args(state, context);
    return ok;
}
