"""`{{name}}`: sets `greeting` from `name` (default "world")."""

import weir


@weir.processor(name="{{name}}", version="0.1.0", description="Greets `name`.", timeout_ms=5000)
def process(state, ctx):
    name = state.get("name", "world")
    if not isinstance(name, str) or not name.strip():
        raise weir.validation("`name` must be a non-blank string", code="blank-name")
    ctx.info("greeting")
    return {"greeting": f"Hello, {name}!"}


Handler = weir.Handler
