"""Messages to a prompt and reply text back to thinking, content and tool calls: Jinja and Go
templates, prompting, thinking, tool calls and reply parsing."""
