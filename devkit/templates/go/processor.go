// `{{name}}`: sets `greeting` from `name` (default "world").
package main

import (
	"strings"

	"wit_component/weir"
)

func init() {
	weir.Register(weir.Meta{
		Name:        "{{name}}",
		Version:     "0.1.0",
		Description: "Greets `name`.",
		TimeoutMs:   1000,
	}, greet)
}

func greet(state weir.State, ctx *weir.Context) (weir.State, error) {
	name := "world"
	if value, present := state["name"]; present {
		text, ok := value.(string)
		if !ok || strings.TrimSpace(text) == "" {
			return nil, weir.Validation("blank-name", "`name` must be a non-blank string")
		}
		name = text
	}
	ctx.Info("greeting", nil)
	return weir.State{"greeting": "Hello, " + name + "!"}, nil
}
