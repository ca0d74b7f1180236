// Package export_weir_processor_handler implements the contract's `handler` export on top of
// the function registered with weir.Register. `weir build` stages it; it is not edited.
package export_weir_processor_handler

import (
	"encoding/json"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
	"wit_component/weir"
	. "wit_component/weir_processor_types"
)

func limit(value uint64) witTypes.Option[uint64] {
	if value == 0 {
		return witTypes.None[uint64]()
	}
	return witTypes.Some(value)
}

// Describe returns the registered processor's metadata.
func Describe() ProcessorMetadata {
	meta, _ := weir.Registered()
	version := meta.Version
	if version == "" {
		version = "0.1.0"
	}
	return ProcessorMetadata{
		Name:        meta.Name,
		Version:     version,
		Description: meta.Description,
		Limits: Limits{
			TimeoutMs:   limit(meta.TimeoutMs),
			MemoryBytes: limit(meta.MemoryBytes),
			Fuel:        limit(meta.Fuel),
			OutputBytes: limit(meta.OutputBytes),
		},
		Retry: witTypes.None[RetryPolicy](),
		Queue: witTypes.None[QueueSettings](),
	}
}

func fail(err error) witTypes.Result[string, ProcessorError] {
	return witTypes.Err[string, ProcessorError](weir.ToWit(err))
}

// Process runs the registered processor on state.
func Process(state string, context ExecutionContext) (result witTypes.Result[string, ProcessorError]) {
	meta, fn := weir.Registered()
	if fn == nil {
		return fail(&weir.Error{Kind: weir.KindConfiguration, Code: "no-processor", Message: "no function was passed to weir.Register"})
	}
	defer func() {
		if value := recover(); value != nil {
			result = fail(weir.Panicked(value))
		}
	}()
	var input weir.State
	if err := json.Unmarshal([]byte(state), &input); err != nil {
		return fail(weir.Validation("invalid-json", "the state is not a JSON object: "+err.Error()))
	}
	// The merge works on the input's own JSON text, so fields the processor leaves alone
	// keep their exact value (a float64 round trip would round integers above 2^53).
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(state), &raw); err != nil {
		return fail(weir.Validation("invalid-json", "the state is not a JSON object: "+err.Error()))
	}
	ctx := &weir.Context{
		ExecutionID:    context.ExecutionId,
		Tenant:         context.Tenant,
		SessionID:      context.SessionId.SomeOr(""),
		Processor:      context.Processor,
		Attempt:        context.Attempt,
		CallDepth:      context.CallDepth,
		DeadlineUnixMs: context.DeadlineUnixMs,
	}
	output, err := fn(input, ctx)
	if err != nil {
		return fail(err)
	}
	var text []byte
	switch {
	case output == nil:
		// No changes: the input as it came.
		text = []byte(state)
	case meta.Replace:
		text, err = json.Marshal(output)
	default:
		for key, value := range output {
			encoded, encodeErr := json.Marshal(value)
			if encodeErr != nil {
				err = encodeErr
				break
			}
			raw[key] = encoded
		}
		if err == nil {
			text, err = json.Marshal(raw)
		}
	}
	if err != nil {
		return fail(&weir.Error{Kind: weir.KindExecution, Code: "invalid-output", Message: "the output cannot be encoded as JSON: " + err.Error()})
	}
	return witTypes.Ok[string, ProcessorError](string(text))
}
