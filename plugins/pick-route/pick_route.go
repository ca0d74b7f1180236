// `pick-route`: chooses where an order goes and sets `route` to the key, so it can serve as
// the selector of a route workflow. Orders flagged `urgent`, or above `reviewLimit` (an
// operator setting, 1000 by default) in `amount`, go to `review`; orders whose `country` is
// set and is not "US" go to `international`; everything else to `standard`.
package main

import (
	"strconv"

	"wit_component/weir"
)

func init() {
	weir.Register(weir.Meta{
		Name:        "pick-route",
		Version:     "0.1.0",
		Description: "Sets `route` to review, international or standard for an order.",
		TimeoutMs:   1000,
	}, pickRoute)
}

func pickRoute(state weir.State, ctx *weir.Context) (weir.State, error) {
	amount, ok := state["amount"].(float64)
	if !ok {
		return nil, weir.Validation("missing-amount", "`amount` must be a number")
	}
	limit := 1000.0
	if value, set := ctx.Config("reviewLimit"); set {
		parsed, err := strconv.ParseFloat(value, 64)
		if err != nil {
			return nil, &weir.Error{Kind: weir.KindConfiguration, Code: "bad-review-limit",
				Message: "the reviewLimit setting must be a number, not " + strconv.Quote(value)}
		}
		limit = parsed
	}
	country, _ := state["country"].(string)
	route := "standard"
	switch {
	case state["urgent"] == true || amount > limit:
		route = "review"
	case country != "" && country != "US":
		route = "international"
	}
	ctx.Info("routed", map[string]any{"route": route})
	return weir.State{"route": route}, nil
}
