// Write weir processors in JavaScript (built into a component with componentize-js).
//
// A processor is a function from a JSON state (an object) to a new state (an object) or a
// typed error. Register one function with `processor(...)` and export the handler:
//
//     import { processor, validation } from './weir.js';
//
//     export const handler = processor(
//       { name: 'validate-json', version: '0.1.0', description: 'Checks a document.' },
//       (state, ctx) => {
//         if (typeof state.document !== 'object') throw validation('`document` is missing');
//         return { valid: true };
//       },
//     );
//
// By default the returned object is merged into the input state (each top-level key
// replaces the input's); pass `output: 'replace'` to make it the whole new state. The host
// owns the state's `metadata` and overwrites it. The state goes through JSON.parse, so, as
// anywhere in JavaScript, integers beyond 2^53 lose precision (even in fields the
// processor does not touch); keep such values in strings. The processor must be
// synchronous: a returned Promise is an error.
//
// Errors: throw `new ProcessorError(kind, message, { code, retryable, details })` for a typed
// failure (`validation`, `business` and `notFound` build the common ones). Anything else
// thrown becomes an `execution` error carrying the exception's name and message.

import { log } from 'weir:processor/logging@0.1.0';
import { emit, progress } from 'weir:processor/events@0.1.0';
import { call } from 'weir:processor/invoke@0.1.0';
import { cancelled } from 'weir:processor/cancellation@0.1.0';
import { get as configGet } from 'weir:processor/config@0.1.0';

/** The error kinds of the contract. */
export const Kind = Object.freeze({
  VALIDATION: 'validation',
  BUSINESS: 'business',
  NOT_FOUND: 'not-found',
  TIMEOUT: 'timeout',
  RESOURCE: 'resource',
  NETWORK: 'network',
  CONFIGURATION: 'configuration',
  EXECUTION: 'execution',
  CANCELLED: 'cancelled',
  CONFLICT: 'conflict',
});

/** A typed failure: throw it from a processor to fail with this kind and message. */
export class ProcessorError extends Error {
  constructor(kind, message, { code, retryable = false, details } = {}) {
    super(message);
    this.name = 'ProcessorError';
    this.kind = kind;
    this.code = code;
    this.retryable = retryable;
    this.details = details;
  }

  /** The contract's `processor-error` record. */
  toWit() {
    let details;
    try {
      details = this.details === undefined ? undefined : JSON.stringify(this.details);
    } catch (e) {
      details = JSON.stringify({ unserialisable: String(e) });
    }
    return {
      kind: this.kind,
      code: this.code,
      message: String(this.message),
      retryable: Boolean(this.retryable),
      details,
    };
  }
}

/** The input state is not acceptable (never retried). */
export function validation(message, code, details) {
  return new ProcessorError(Kind.VALIDATION, message, { code, details });
}

/** A business rule refused the input (never retried). */
export function business(code, message, details) {
  return new ProcessorError(Kind.BUSINESS, message, { code, details });
}

/** Something the processor needed does not exist. */
export function notFound(message, code) {
  return new ProcessorError(Kind.NOT_FOUND, message, { code });
}

// A host call's `err(processor-error)` arrives as a thrown value carrying the record.
function rethrow(thrown) {
  const err = thrown && thrown.payload !== undefined ? thrown.payload : thrown;
  if (err && typeof err === 'object' && typeof err.kind === 'string') {
    const details = err.details === undefined ? undefined : JSON.parse(err.details);
    throw new ProcessorError(err.kind, err.message, {
      code: err.code,
      retryable: err.retryable,
      details,
    });
  }
  throw thrown;
}

/** Facts about the running execution, and the host's services. */
export class Context {
  constructor(wit) {
    this.executionId = wit.executionId;
    this.tenant = wit.tenant;
    this.sessionId = wit.sessionId;
    this.processor = wit.processor;
    this.attempt = wit.attempt;
    this.callDepth = wit.callDepth;
    // A u64 arrives as a BigInt; milliseconds since 1970 fit a Number exactly.
    this.deadlineUnixMs = Number(wit.deadlineUnixMs);
  }

  /** Writes a log line; `level` is one of trace, debug, info, warn, error. */
  log(level, message, fields) {
    log(level, message, fields === undefined ? undefined : JSON.stringify(fields));
  }

  info(message, fields) {
    this.log('info', message, fields);
  }

  /** Emits a custom event with a JSON-serialisable payload. */
  emit(name, data) {
    try {
      emit(name, JSON.stringify(data));
    } catch (e) {
      rethrow(e);
    }
  }

  /** Reports progress from 0 to 100. */
  progress(percent, message = '') {
    try {
      progress(Math.max(0, Math.min(100, Math.trunc(percent))), message);
    } catch (e) {
      rethrow(e);
    }
  }

  /** Runs another processor or workflow on `state` and returns its output state. */
  call(name, state) {
    try {
      return JSON.parse(call(name, JSON.stringify(state)));
    } catch (e) {
      return rethrow(e);
    }
  }

  /** True once this execution has been cancelled: stop and throw a CANCELLED error. */
  cancelled() {
    return cancelled();
  }

  /** The operator's setting `key` for this plugin, or `fallback`. */
  config(key, fallback) {
    const value = configGet(key);
    return value === undefined ? fallback : value;
  }
}

function executionError(e) {
  const name = e && e.name ? String(e.name) : typeof e;
  const text = e && e.message !== undefined ? String(e.message) : String(e);
  return {
    kind: Kind.EXECUTION,
    code: 'js-exception',
    message: `${name}: ${text}`,
    retryable: false,
    details: JSON.stringify({ exception: name, stack: e && e.stack ? String(e.stack) : undefined }),
  };
}

function invalidOutput(message) {
  return new ProcessorError(Kind.EXECUTION, message, { code: 'invalid-output' }).toWit();
}

/**
 * Builds the `handler` export from a function `(state, ctx) => object`.
 *
 * `meta`: `name` (must equal the .wasm file stem), `version`, `description`, optional
 * `limits` (`timeoutMs`, `memoryBytes`, `fuel`, `outputBytes`) and `output`
 * (`'merge'`, the default, or `'replace'`).
 */
export function processor(meta, fn) {
  const output = meta.output ?? 'merge';
  if (output !== 'merge' && output !== 'replace') {
    throw new Error("output must be 'merge' or 'replace'");
  }
  const limits = meta.limits ?? {};
  const metadata = {
    name: meta.name,
    version: meta.version ?? '0.1.0',
    description: meta.description ?? '',
    limits: {
      timeoutMs: limits.timeoutMs === undefined ? undefined : BigInt(limits.timeoutMs),
      memoryBytes: limits.memoryBytes === undefined ? undefined : BigInt(limits.memoryBytes),
      fuel: limits.fuel === undefined ? undefined : BigInt(limits.fuel),
      outputBytes: limits.outputBytes === undefined ? undefined : BigInt(limits.outputBytes),
    },
    retry: undefined,
    queue: undefined,
  };
  return {
    describe() {
      return metadata;
    },
    process(stateJson, context) {
      let state;
      try {
        state = JSON.parse(stateJson);
      } catch (e) {
        throw validation(`the state is not valid JSON: ${e.message}`).toWit();
      }
      let result;
      try {
        result = fn(state, new Context(context));
      } catch (e) {
        throw e instanceof ProcessorError ? e.toWit() : executionError(e);
      }
      if (result === null || typeof result !== 'object' || Array.isArray(result)) {
        throw invalidOutput('the processor returned something other than an object');
      }
      if (typeof result.then === 'function') {
        throw invalidOutput('the processor returned a Promise: processors must be synchronous');
      }
      try {
        return JSON.stringify(output === 'merge' ? Object.assign(state, result) : result);
      } catch (e) {
        throw invalidOutput(`the output cannot be encoded as JSON: ${e.message}`);
      }
    },
  };
}
