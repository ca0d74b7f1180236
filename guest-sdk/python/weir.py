"""Write weir processors in Python (built into a component with componentize-py).

A processor is a function from a JSON state (a dict) to a new state (a dict) or a typed
error. Decorate one function with `@weir.processor(...)` and export the handler:

    import weir

    @weir.processor(name="text-stats", version="0.1.0", description="Counts words.")
    def process(state, ctx):
        text = state.get("text")
        if not isinstance(text, str):
            raise weir.ProcessorError(weir.VALIDATION, "`text` must be a string", code="missing-text")
        return {"words": len(text.split())}

    Handler = weir.Handler

By default the returned dict is merged into the input state (each top-level key replaces
the input's); pass `output="replace"` to make it the whole new state. The host owns the
state's `metadata` and overwrites it.

Errors: raise `ProcessorError(kind, message, code=..., retryable=..., details=...)` for a
typed failure (the helpers `validation(...)`, `business(...)`, `not_found(...)` build the
common ones). Any other exception becomes an `execution` error whose message is the
exception's type and text, with the traceback in `details`.
"""

import json
import traceback

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import cancellation, config, events, invoke, logging, session_store, types

VALIDATION = types.ErrorKind.VALIDATION
BUSINESS = types.ErrorKind.BUSINESS
NOT_FOUND = types.ErrorKind.NOT_FOUND
TIMEOUT = types.ErrorKind.TIMEOUT
RESOURCE = types.ErrorKind.RESOURCE
NETWORK = types.ErrorKind.NETWORK
CONFIGURATION = types.ErrorKind.CONFIGURATION
EXECUTION = types.ErrorKind.EXECUTION
CANCELLED = types.ErrorKind.CANCELLED
CONFLICT = types.ErrorKind.CONFLICT


class ProcessorError(Exception):
    """A typed failure: raise it from a processor to fail with this kind and message."""

    def __init__(self, kind, message, code=None, retryable=False, details=None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.code = code
        self.retryable = retryable
        self.details = details

    def to_wit(self):
        details = None if self.details is None else json.dumps(self.details, allow_nan=False)
        code = None if self.code is None else str(self.code)
        return types.ProcessorError(self.kind, code, str(self.message), bool(self.retryable), details)


def validation(message, code=None, details=None):
    """The input state is not acceptable (never retried)."""
    return ProcessorError(VALIDATION, message, code=code, details=details)


def business(code, message, details=None):
    """A business rule refused the input (never retried)."""
    return ProcessorError(BUSINESS, message, code=code, details=details)


def not_found(message, code=None):
    """Something the processor needed does not exist."""
    return ProcessorError(NOT_FOUND, message, code=code)


def _raise_wit(err):
    """Turns a host call's `Err(processor-error)` into a ProcessorError."""
    value = err.value
    details = None if value.details is None else json.loads(value.details)
    raise ProcessorError(value.kind, value.message, value.code, value.retryable, details) from None


class Context:
    """Facts about the running execution, and the host's services."""

    def __init__(self, wit_context):
        self.execution_id = wit_context.execution_id
        self.tenant = wit_context.tenant
        self.session_id = wit_context.session_id
        self.processor = wit_context.processor
        self.attempt = wit_context.attempt
        self.call_depth = wit_context.call_depth
        self.deadline_unix_ms = wit_context.deadline_unix_ms

    def log(self, level, message, **fields):
        """Writes a log line; `level` is one of trace, debug, info, warn, error."""
        wit_level = logging.Level[level.upper()]
        logging.log(wit_level, message, json.dumps(fields) if fields else None)

    def info(self, message, **fields):
        self.log("info", message, **fields)

    def warn(self, message, **fields):
        self.log("warn", message, **fields)

    def emit(self, name, data):
        """Emits a custom event with a JSON-serialisable payload."""
        try:
            events.emit(name, json.dumps(data))
        except Err as err:
            _raise_wit(err)

    def progress(self, percent, message=""):
        """Reports progress from 0 to 100."""
        try:
            events.progress(max(0, min(100, int(percent))), message)
        except Err as err:
            _raise_wit(err)

    def call(self, name, state):
        """Runs another processor or workflow on `state` and returns its output state."""
        try:
            return json.loads(invoke.call(name, json.dumps(state)))
        except Err as err:
            _raise_wit(err)

    def cancelled(self):
        """True once this execution has been cancelled: stop and raise a CANCELLED error."""
        return cancellation.cancelled()

    def config(self, key, default=None):
        """The operator's setting `key` for this plugin, or `default`."""
        value = config.get(key)
        return default if value is None else value

    def session_get(self, key):
        try:
            return session_store.get(key)
        except Err as err:
            _raise_wit(err)

    def session_set(self, key, value):
        try:
            session_store.set(key, value)
        except Err as err:
            _raise_wit(err)


_registered = None


def processor(name, version="0.1.0", description="", timeout_ms=None, memory_bytes=None,
              fuel=None, output_bytes=None, output="merge"):
    """Registers the decorated function `(state: dict, ctx: Context) -> dict` as the processor."""
    if output not in ("merge", "replace"):
        raise ValueError("output must be 'merge' or 'replace'")

    def register(function):
        global _registered
        _registered = (
            types.ProcessorMetadata(
                name=name,
                version=version,
                description=description,
                limits=types.Limits(timeout_ms, memory_bytes, fuel, output_bytes),
                retry=None,
                queue=None,
            ),
            function,
            output,
        )
        return function

    return register


def _typed_error(exc):
    """The contract's record for a ProcessorError; one that cannot be encoded (a kind that is
    not an ErrorKind, details that are not JSON) becomes an execution error saying so."""
    try:
        if not isinstance(exc.kind, types.ErrorKind):
            raise TypeError(f"kind must be a weir error kind (e.g. weir.VALIDATION), not {exc.kind!r}")
        return exc.to_wit()
    except Exception as bad:
        return _execution_error(bad)


def _execution_error(exc):
    message = f"{type(exc).__name__}: {exc}"
    details = json.dumps({"exception": type(exc).__name__, "traceback": traceback.format_exc()})
    return types.ProcessorError(EXECUTION, "python-exception", message, False, details)


class Handler(exports.Handler):
    """The `handler` export: assign it to `Handler` in your app module."""

    def describe(self):
        if _registered is None:
            raise RuntimeError("no function is decorated with @weir.processor")
        return _registered[0]

    def process(self, state, context):
        if _registered is None:
            raise Err(_execution_error(RuntimeError("no function is decorated with @weir.processor")))
        _, function, output = _registered
        try:
            try:
                data = json.loads(state)
            except ValueError as exc:
                raise validation(f"the state is not valid JSON: {exc}") from None
            result = function(data, Context(context))
            if not isinstance(result, dict):
                raise ProcessorError(
                    EXECUTION,
                    f"the processor returned {type(result).__name__}, not a dict",
                    code="invalid-output",
                )
            if output == "merge":
                data.update(result)
                result = data
            try:
                return json.dumps(result, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise ProcessorError(
                    EXECUTION, f"the output cannot be encoded as JSON: {exc}", code="invalid-output"
                ) from None
        except ProcessorError as exc:
            error = _typed_error(exc)
        except Exception as exc:  # any other failure is the processor's bug: report it typed
            error = _execution_error(exc)
        raise Err(error)
