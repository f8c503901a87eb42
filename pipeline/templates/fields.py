"""Names shared by the renderer, the conversation checks and the data options: which message
fields carry reasoning and the per-turn flag, and which template variables sftpack passes itself.
A leaf module (no imports), so the light checks and config can use them without loading jinja.
"""

REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")
"""Names a message's reasoning is read from, in this order, and given to the template under."""
TRAIN_FLAG = "train"
"""An assistant message's per-turn flag: false leaves the turn untrained (never given to the template)."""
RESERVED_TEMPLATE_ARGS = frozenset({"messages", "tools", "add_generation_prompt"})
"""Template variables sftpack passes itself; template arguments may not set them."""
