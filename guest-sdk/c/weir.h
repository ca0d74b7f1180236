/*
 * weir.h: helpers for weir processors written in C (header-only; `weir build` puts it and
 * the generated bindings, `processor.h`, on the include path).
 *
 * A C processor implements the two functions of the contract's `handler` export:
 *
 *     void exports_weir_processor_handler_describe(exports_weir_processor_handler_processor_metadata_t *ret);
 *     bool exports_weir_processor_handler_process(exports_weir_processor_handler_json_t *state,
 *         exports_weir_processor_handler_execution_context_t *context,
 *         exports_weir_processor_handler_json_t *ret,
 *         exports_weir_processor_handler_processor_error_t *err);
 *
 * `process` returns true with the new state in `ret`, or false with a typed error in `err`.
 * Everything returned must be allocated (the host frees it after the call): use
 * `weir_describe` for the metadata, `weir_fail` for errors and `weir_state_with` to build
 * the output state. The arguments belong to the function: free them with `weir_free_args`.
 *
 * The state is JSON text. `weir_json_get_string` reads a top-level string field and
 * `weir_state_with` returns the input object with one top-level field set (replacing it
 * if present), so a processor never has to parse or print JSON itself. Both expect the
 * valid JSON the host sends and field names without escapes. A value given to
 * `weir_state_with` must itself be valid JSON: escape what you embed in a string.
 */
#ifndef WEIR_H
#define WEIR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "processor.h"

typedef exports_weir_processor_handler_json_t weir_json_t;
typedef exports_weir_processor_handler_processor_error_t weir_error_t;
typedef exports_weir_processor_handler_execution_context_t weir_context_t;
typedef exports_weir_processor_handler_processor_metadata_t weir_metadata_t;

/* Fills the metadata: name (must equal the .wasm file stem), version, description and a
 * default timeout in milliseconds (0 for the host's default). */
static inline void weir_describe(weir_metadata_t *ret, const char *name, const char *version,
                                 const char *description, uint64_t timeout_ms) {
    memset(ret, 0, sizeof *ret);
    processor_string_dup(&ret->name, name);
    processor_string_dup(&ret->version, version);
    processor_string_dup(&ret->description, description);
    if (timeout_ms > 0) {
        ret->limits.timeout_ms.is_some = true;
        ret->limits.timeout_ms.val = timeout_ms;
    }
}

/* Fills a typed error and returns false, so `return weir_fail(err, ...);` ends `process`.
 * `kind` is one of WEIR_PROCESSOR_TYPES_ERROR_KIND_*; `code` may be NULL. */
static inline bool weir_fail(weir_error_t *err, uint8_t kind, const char *code, const char *message) {
    memset(err, 0, sizeof *err);
    err->kind = kind;
    if (code != NULL) {
        err->code.is_some = true;
        processor_string_dup(&err->code.val, code);
    }
    processor_string_dup(&err->message, message);
    return false;
}

/* Frees the arguments `process` received. */
static inline void weir_free_args(weir_json_t *state, weir_context_t *context) {
    exports_weir_processor_handler_json_free(state);
    exports_weir_processor_handler_execution_context_free(context);
}

/* Writes a log line at `level` (WEIR_PROCESSOR_LOGGING_LEVEL_*). */
static inline void weir_log(uint8_t level, const char *message) {
    processor_string_t text;
    processor_string_set(&text, message);
    weir_processor_logging_log(level, &text, NULL);
}

/* --- A small JSON reader, enough to pick top-level fields out of the state. ----------- */

static inline size_t weir__ws(const uint8_t *s, size_t n, size_t i) {
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
    return i;
}

/* The index just past the JSON string starting at s[i] (a '"'), or 0 when malformed. */
static inline size_t weir__skip_string(const uint8_t *s, size_t n, size_t i) {
    for (i++; i < n; i++) {
        if (s[i] == '\\') i++;
        else if (s[i] == '"') return i + 1;
    }
    return 0;
}

/* The index just past the JSON value starting at s[i], or 0 when malformed. */
static inline size_t weir__skip_value(const uint8_t *s, size_t n, size_t i) {
    i = weir__ws(s, n, i);
    if (i >= n) return 0;
    if (s[i] == '"') return weir__skip_string(s, n, i);
    if (s[i] == '{' || s[i] == '[') {
        size_t depth = 0;
        for (; i < n; i++) {
            if (s[i] == '"') {
                i = weir__skip_string(s, n, i);
                if (i == 0) return 0;
                i--;
            } else if (s[i] == '{' || s[i] == '[') {
                depth++;
            } else if (s[i] == '}' || s[i] == ']') {
                if (--depth == 0) return i + 1;
            }
        }
        return 0;
    }
    while (i < n && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' && s[i] != '\n' &&
           s[i] != '\r' && s[i] != '\t')
        i++;
    return i;
}

/* Finds the top-level field `key` of the JSON object `json`: sets [*start, *end) to its
 * value's text and, when `key_start` is not NULL, *key_start to where its member begins.
 * Returns false when the field is absent or the text is not an object. */
static inline bool weir__find(const weir_json_t *json, const char *key, size_t *start, size_t *end,
                              size_t *key_start) {
    const uint8_t *s = json->ptr;
    size_t n = json->len, klen = strlen(key);
    size_t i = weir__ws(s, n, 0);
    if (i >= n || s[i] != '{') return false;
    i++;
    for (;;) {
        i = weir__ws(s, n, i);
        if (i >= n || s[i] == '}') return false;
        if (s[i] != '"') return false;
        size_t member = i;
        size_t kend = weir__skip_string(s, n, i);
        if (kend == 0) return false;
        /* A key written with escapes never matches (weir_state_with would then add the
         * field again): use plain ASCII names for the fields you read and set. */
        bool match = kend - i - 2 == klen && memcmp(s + i + 1, key, klen) == 0;
        i = weir__ws(s, n, kend);
        if (i >= n || s[i] != ':') return false;
        size_t vstart = weir__ws(s, n, i + 1);
        size_t vend = weir__skip_value(s, n, vstart);
        if (vend == 0) return false;
        if (match) {
            *start = vstart;
            *end = vend;
            if (key_start != NULL) *key_start = member;
            return true;
        }
        i = weir__ws(s, n, vend);
        if (i < n && s[i] == ',') i++;
    }
}

/* Whether the object `json` has the top-level field `key` (of any type, null included). */
static inline bool weir_json_has(const weir_json_t *json, const char *key) {
    size_t start, end;
    return weir__find(json, key, &start, &end, NULL);
}

static inline void weir__utf8(char *out, size_t *o, uint32_t c) {
    if (c < 0x80) {
        out[(*o)++] = (char)c;
    } else if (c < 0x800) {
        out[(*o)++] = (char)(0xC0 | (c >> 6));
        out[(*o)++] = (char)(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
        out[(*o)++] = (char)(0xE0 | (c >> 12));
        out[(*o)++] = (char)(0x80 | ((c >> 6) & 0x3F));
        out[(*o)++] = (char)(0x80 | (c & 0x3F));
    } else {
        out[(*o)++] = (char)(0xF0 | (c >> 18));
        out[(*o)++] = (char)(0x80 | ((c >> 12) & 0x3F));
        out[(*o)++] = (char)(0x80 | ((c >> 6) & 0x3F));
        out[(*o)++] = (char)(0x80 | (c & 0x3F));
    }
}

static inline int weir__hex4(const uint8_t *s, uint32_t *out) {
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
        uint8_t c = s[k];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

/* Reads the top-level string field `key`, decoding escapes: returns a malloc'd UTF-8
 * buffer (free it) with its length in *len, or NULL when the field is absent, not a string
 * or malformed. */
static inline char *weir_json_get_string(const weir_json_t *json, const char *key, size_t *len) {
    size_t start, end;
    if (!weir__find(json, key, &start, &end, NULL) || json->ptr[start] != '"') return NULL;
    const uint8_t *s = json->ptr;
    char *out = malloc(end - start + 1);
    if (out == NULL) return NULL;
    size_t o = 0;
    for (size_t i = start + 1; i < end - 1; i++) {
        if (s[i] != '\\') {
            out[o++] = (char)s[i];
            continue;
        }
        i++;
        switch (s[i]) {
        case 'n': out[o++] = '\n'; break;
        case 't': out[o++] = '\t'; break;
        case 'r': out[o++] = '\r'; break;
        case 'b': out[o++] = '\b'; break;
        case 'f': out[o++] = '\f'; break;
        case 'u': {
            uint32_t c;
            if (i + 4 >= end || !weir__hex4(s + i + 1, &c)) { free(out); return NULL; }
            i += 4;
            if (c >= 0xD800 && c < 0xDC00 && i + 6 < end && s[i + 1] == '\\' && s[i + 2] == 'u') {
                uint32_t low;
                if (weir__hex4(s + i + 3, &low) && low >= 0xDC00 && low < 0xE000) {
                    c = 0x10000 + ((c - 0xD800) << 10) + (low - 0xDC00);
                    i += 6;
                }
            }
            /* A surrogate without its pair is not a character: U+FFFD stands for it. */
            if (c >= 0xD800 && c < 0xE000) c = 0xFFFD;
            weir__utf8(out, &o, c);
            break;
        }
        default: out[o++] = (char)s[i]; break; /* \" \\ \/ */
        }
    }
    out[o] = '\0';
    *len = o;
    return out;
}

/* Sets *ret to the object `json` with its top-level field `key` set to `value` (JSON text,
 * e.g. "\"abc\"" or "42"), replacing an existing field of that name. Returns false when
 * `json` is not an object or memory runs out. */
static inline bool weir_state_with(const weir_json_t *json, const char *key, const char *value,
                                   weir_json_t *ret) {
    const uint8_t *s = json->ptr;
    size_t n = json->len, klen = strlen(key), vlen = strlen(value);
    size_t start, end, member;
    size_t cut_from = 0, cut_to = 0; /* the existing member, with one adjoining comma */
    if (weir__find(json, key, &start, &end, &member)) {
        size_t after = weir__ws(s, n, end);
        if (after < n && s[after] == ',') {
            cut_from = member;
            cut_to = after + 1;
        } else {
            /* The last member: also drop the comma before it, if any. */
            size_t before = member;
            while (before > 0 && (s[before - 1] == ' ' || s[before - 1] == '\n' || s[before - 1] == '\t' || s[before - 1] == '\r')) before--;
            cut_from = (before > 0 && s[before - 1] == ',') ? before - 1 : member;
            cut_to = end;
        }
    }
    /* The closing brace of the object. */
    size_t close = n;
    while (close > 0 && s[close - 1] != '}') close--;
    size_t open = weir__ws(s, n, 0);
    if (close == 0 || open >= n || s[open] != '{') return false;
    close--;
    size_t cap = n + klen + vlen + 8;
    uint8_t *out = malloc(cap);
    if (out == NULL) return false;
    size_t o = 0;
    for (size_t i = 0; i < close; i++) {
        if (i >= cut_from && i < cut_to) continue;
        out[o++] = s[i];
    }
    /* Does the object (after the cut) already have a member? */
    bool empty = true;
    for (size_t i = o; i > 0; i--) {
        uint8_t c = out[i - 1];
        if (c == ' ' || c == '\n' || c == '\t' || c == '\r') continue;
        empty = c == '{';
        break;
    }
    if (!empty) out[o++] = ',';
    out[o++] = '"';
    memcpy(out + o, key, klen);
    o += klen;
    out[o++] = '"';
    out[o++] = ':';
    memcpy(out + o, value, vlen);
    o += vlen;
    out[o++] = '}';
    ret->ptr = out;
    ret->len = o;
    return true;
}

#endif /* WEIR_H */
