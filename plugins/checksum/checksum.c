/* `checksum`: sets `crc32` to the CRC-32 (IEEE 802.3, as zlib computes it) of the UTF-8
 * bytes of `text`, as eight lowercase hex digits. */
#include <stdio.h>

#include "weir.h"

static uint32_t crc32(const uint8_t *data, size_t len) {
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < len; i++) {
        crc ^= data[i];
        for (int bit = 0; bit < 8; bit++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

void exports_weir_processor_handler_describe(weir_metadata_t *ret) {
    weir_describe(ret, "checksum", "0.1.0", "Sets `crc32` to the CRC-32 of `text`, in hex.", 1000);
}

bool exports_weir_processor_handler_process(weir_json_t *state, weir_context_t *context,
                                            weir_json_t *ret, weir_error_t *err) {
    size_t len;
    char *text = weir_json_get_string(state, "text", &len);
    bool ok;
    if (text == NULL) {
        ok = weir_fail(err, WEIR_PROCESSOR_TYPES_ERROR_KIND_VALIDATION, "missing-text",
                       "`text` must be a string");
    } else {
        char hex[16];
        snprintf(hex, sizeof hex, "\"%08x\"", crc32((const uint8_t *)text, len));
        free(text);
        ok = weir_state_with(state, "crc32", hex, ret) ||
             weir_fail(err, WEIR_PROCESSOR_TYPES_ERROR_KIND_VALIDATION, "not-an-object",
                       "the state must be a JSON object");
    }
    weir_free_args(state, context);
    return ok;
}
