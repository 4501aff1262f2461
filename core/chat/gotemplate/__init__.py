"""Go text/template for Ollama chat templates: parse and render them exactly as Ollama does.

Models pulled from Ollama's registry, and Modelfile TEMPLATE lines, carry their chat template in
Go's text/template syntax. This package implements the part of it those templates use -- text and
actions with ``{{-``/``-}}`` trim markers, comments, pipelines, fields, variables, if / else if /
else, range (with else, break, continue), with, Go's builtin functions and Ollama's own (json,
currentDate, yesterdayDate, toTypeScriptType) -- as a lexer, a parser into a small node tree and an
evaluator. ``render`` then reproduces Ollama's ``template.Execute``: the values it passes, how it
collates messages, and how it renders legacy templates that only know .System/.Prompt/.Response.

Templates come from downloaded files: evaluation only reads dict keys, list items and the fields of
the Go-shaped values built here (never Python attributes), and nesting, work and output are bounded.

The package's parts: ``parse`` (lexer, node tree, parser), ``functions`` (Go values and Go's and
Ollama's template functions), ``execute`` (the evaluator), ``values`` (Ollama's values and ``render``).
"""

from __future__ import annotations

from corral.chat.gotemplate.execute import _execute
from corral.chat.gotemplate.functions import GoStruct
from corral.chat.gotemplate.parse import Template, parse_template, uses_messages
from corral.chat.gotemplate.values import render

__all__ = ["GoStruct", "Template", "_execute", "parse_template", "render", "uses_messages"]
