/* `{{name}}`: sets `greeting` from `name` (default "world"). */
#include <stdio.h>

#include "weir.h"

void exports_weir_processor_handler_describe(weir_metadata_t *ret) {
    weir_describe(ret, "{{name}}", "0.1.0", "Greets `name`.", 1000);
}

/* A name this template can put into JSON as is: not blank, and no character that JSON
 * would need to escape (quotes, backslashes, control characters). */
static bool plain_name(const char *name) {
    bool blank = true;
    for (const unsigned char *c = (const unsigned char *)name; *c != '\0'; c++) {
        if (*c < 0x20 || *c == '"' || *c == '\\') return false;
        if (*c != ' ') blank = false;
    }
    return !blank;
}

bool exports_weir_processor_handler_process(weir_json_t *state, weir_context_t *context,
                                            weir_json_t *ret, weir_error_t *err) {
    size_t len = 0;
    char *name = weir_json_get_string(state, "name", &len);
    bool ok;
    if (weir_json_has(state, "name") && (name == NULL || !plain_name(name))) {
        ok = weir_fail(err, WEIR_PROCESSOR_TYPES_ERROR_KIND_VALIDATION, "blank-name",
                       "`name` must be a non-blank string without quotes, backslashes or control characters");
    } else {
        const char *who = name != NULL ? name : "world";
        size_t size = strlen(who) + 16;
        char *greeting = malloc(size);
        ok = greeting != NULL;
        if (ok) {
            snprintf(greeting, size, "\"Hello, %s!\"", who);
            ok = weir_state_with(state, "greeting", greeting, ret) ||
                 weir_fail(err, WEIR_PROCESSOR_TYPES_ERROR_KIND_VALIDATION, "not-an-object",
                           "the state must be a JSON object");
        } else {
            ok = weir_fail(err, WEIR_PROCESSOR_TYPES_ERROR_KIND_RESOURCE, "out-of-memory", "out of memory");
        }
        free(greeting);
        weir_log(WEIR_PROCESSOR_LOGGING_LEVEL_INFO, "greeting");
    }
    free(name);
    weir_free_args(state, context);
    return ok;
}
