// Package weir is the Go SDK for weir processors: register one function with Register and
// `weir build` turns the package into a component.
//
// A processor is a function from a JSON state to a new state or a typed error:
//
//	package main
//
//	import "wit_component/weir"
//
//	func init() {
//		weir.Register(weir.Meta{Name: "pick-route", Version: "0.1.0"},
//			func(state weir.State, ctx *weir.Context) (weir.State, error) {
//				kind, ok := state["kind"].(string)
//				if !ok {
//					return nil, weir.Validation("missing-kind", "`kind` must be a string")
//				}
//				return weir.State{"route": kind}, nil
//			})
//	}
//
// By default the returned state is merged into the input (each top-level key replaces the
// input's; the other fields keep their exact JSON); set Meta.Replace to make it the whole
// new state. Returning a nil state keeps the input unchanged. The host owns `metadata`.
// Numbers arrive as float64, as encoding/json decodes them.
//
// Errors: return a *weir.Error for a typed failure (Validation, Business and NotFound build
// the common ones). Any other error becomes an `execution` error with its text, and a panic
// becomes an `execution` error with the panic's value.
package weir

import (
	"encoding/json"
	"errors"
	"fmt"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
	"wit_component/weir_processor_cancellation"
	"wit_component/weir_processor_config"
	"wit_component/weir_processor_events"
	"wit_component/weir_processor_invoke"
	"wit_component/weir_processor_logging"
	"wit_component/weir_processor_types"
)

// State is a JSON object.
type State = map[string]any

// Kind is the category of a failure, as the contract defines it.
type Kind = weir_processor_types.ErrorKind

// The error kinds of the contract.
const (
	KindValidation    = weir_processor_types.ErrorKind_Validation
	KindBusiness      = weir_processor_types.ErrorKind_Business
	KindNotFound      = weir_processor_types.ErrorKind_NotFound
	KindTimeout       = weir_processor_types.ErrorKind_Timeout
	KindResource      = weir_processor_types.ErrorKind_Resource
	KindNetwork       = weir_processor_types.ErrorKind_Network
	KindConfiguration = weir_processor_types.ErrorKind_Configuration
	KindExecution     = weir_processor_types.ErrorKind_Execution
	KindCancelled     = weir_processor_types.ErrorKind_Cancelled
	KindConflict      = weir_processor_types.ErrorKind_Conflict
)

// Error is a typed failure: return it from a processor to fail with this kind and message.
type Error struct {
	Kind      Kind
	Code      string
	Message   string
	Retryable bool
	// Details, when not nil, is serialised as JSON.
	Details any
}

func (e *Error) Error() string { return e.Message }

// Validation says the input state is not acceptable (never retried).
func Validation(code, message string) *Error {
	return &Error{Kind: KindValidation, Code: code, Message: message}
}

// Business says a business rule refused the input (never retried).
func Business(code, message string) *Error {
	return &Error{Kind: KindBusiness, Code: code, Message: message}
}

// NotFound says something the processor needed does not exist.
func NotFound(code, message string) *Error {
	return &Error{Kind: KindNotFound, Code: code, Message: message}
}

// Meta is what the processor says about itself.
type Meta struct {
	// Name must equal the plugin's file stem.
	Name string
	// Version is the processor's semver; empty means "0.1.0".
	Version     string
	Description string
	// Default limits; zero means "the host's default".
	TimeoutMs, MemoryBytes, Fuel, OutputBytes uint64
	// Replace makes the returned state the whole new state instead of merging it.
	Replace bool
}

// Func is a processor.
type Func func(state State, ctx *Context) (State, error)

var registered struct {
	meta Meta
	fn   Func
}

// Register makes fn the processor. Call it once, from an init function.
func Register(meta Meta, fn Func) {
	registered.meta = meta
	registered.fn = fn
}

// Registered returns what Register received (for the handler glue).
func Registered() (Meta, Func) { return registered.meta, registered.fn }

// Context holds facts about the running execution, and the host's services.
type Context struct {
	ExecutionID    string
	Tenant         string
	SessionID      string
	Processor      string
	Attempt        uint32
	CallDepth      uint32
	DeadlineUnixMs uint64
}

// Level is a log severity.
type Level = weir_processor_logging.Level

// Log levels.
const (
	LevelTrace = weir_processor_logging.Level_Trace
	LevelDebug = weir_processor_logging.Level_Debug
	LevelInfo  = weir_processor_logging.Level_Info
	LevelWarn  = weir_processor_logging.Level_Warn
	LevelError = weir_processor_logging.Level_Error
)

// Log writes a log line; fields, when not nil, are attached as JSON.
func (c *Context) Log(level Level, message string, fields map[string]any) {
	opt := witTypes.None[string]()
	if fields != nil {
		if data, err := json.Marshal(fields); err == nil {
			opt = witTypes.Some(string(data))
		}
	}
	weir_processor_logging.Log(level, message, opt)
}

// Info writes an info line.
func (c *Context) Info(message string, fields map[string]any) { c.Log(LevelInfo, message, fields) }

// Emit emits a custom event with a JSON-serialisable payload.
func (c *Context) Emit(name string, data any) error {
	text, err := json.Marshal(data)
	if err != nil {
		return err
	}
	return unit(weir_processor_events.Emit(name, string(text)))
}

// Progress reports progress from 0 to 100.
func (c *Context) Progress(percent uint8, message string) error {
	return unit(weir_processor_events.Progress(percent, message))
}

// Call runs another processor or workflow on state and returns its output state.
func (c *Context) Call(name string, state State) (State, error) {
	text, err := json.Marshal(state)
	if err != nil {
		return nil, err
	}
	result := weir_processor_invoke.Call(name, string(text))
	if result.IsErr() {
		return nil, FromWit(result.Err())
	}
	var out State
	if err := json.Unmarshal([]byte(result.Ok()), &out); err != nil {
		return nil, err
	}
	return out, nil
}

// Cancelled is true once this execution has been cancelled: stop and return KindCancelled.
func (c *Context) Cancelled() bool { return weir_processor_cancellation.Cancelled() }

// Config is the operator's setting key for this plugin, and whether it is set.
func (c *Context) Config(key string) (string, bool) {
	value := weir_processor_config.Get(key)
	if value.IsSome() {
		return value.Some(), true
	}
	return "", false
}

func unit(result witTypes.Result[witTypes.Unit, weir_processor_types.ProcessorError]) error {
	if result.IsErr() {
		return FromWit(result.Err())
	}
	return nil
}

// FromWit turns the contract's processor-error into an *Error.
func FromWit(e weir_processor_types.ProcessorError) *Error {
	out := &Error{Kind: e.Kind, Message: e.Message, Retryable: e.Retryable}
	if e.Code.IsSome() {
		out.Code = e.Code.Some()
	}
	if e.Details.IsSome() {
		var details any
		if json.Unmarshal([]byte(e.Details.Some()), &details) == nil {
			out.Details = details
		}
	}
	return out
}

// ToWit turns any error into the contract's processor-error: an *Error (also when
// wrapped, as errors.As finds it) keeps its kind; anything else is an execution error
// with its text.
func ToWit(err error) weir_processor_types.ProcessorError {
	var e *Error
	if !errors.As(err, &e) {
		e = &Error{Kind: KindExecution, Code: "go-error", Message: err.Error()}
	} else if e == nil {
		e = &Error{Kind: KindExecution, Code: "go-error", Message: "the processor returned a nil *weir.Error"}
	}
	out := weir_processor_types.ProcessorError{
		Kind:      e.Kind,
		Message:   e.Message,
		Retryable: e.Retryable,
		Code:      witTypes.None[string](),
		Details:   witTypes.None[string](),
	}
	if e.Code != "" {
		out.Code = witTypes.Some(e.Code)
	}
	if e.Details != nil {
		if data, err := json.Marshal(e.Details); err == nil {
			out.Details = witTypes.Some(string(data))
		}
	}
	return out
}

// Panicked is the execution error for a recovered panic.
func Panicked(value any) *Error {
	return &Error{Kind: KindExecution, Code: "go-panic", Message: fmt.Sprintf("panic: %v", value)}
}
