"""`text-stats`: counts the words, lines and characters of `text`."""

import weir


@weir.processor(
    name="text-stats",
    version="0.1.0",
    description="Counts the words, lines and characters of `text`.",
    timeout_ms=5000,
)
def process(state, ctx):
    text = state.get("text")
    if not isinstance(text, str):
        raise weir.validation("`text` must be a string", code="missing-text")
    if state.get("fail"):
        # Lets tests see how a Python exception reaches the caller.
        raise RuntimeError(f"asked to fail: {state['fail']}")
    stats = {
        "words": len(text.split()),
        "lines": len(text.splitlines()),
        "characters": len(text),
    }
    ctx.info("counted", **stats)
    return {"stats": stats}


Handler = weir.Handler
