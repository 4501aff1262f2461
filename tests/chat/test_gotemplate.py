"""Go text/template rendering of Ollama chat templates: Ollama's own expected outputs, then the language."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from corral.chat import gotemplate
from corral.chat.gotemplate import parse_template, render, uses_messages
from corral.errors import BadRequest

# Ollama's built-in templates and their expected renderings (MIT, see the folder's LICENSE-ollama).
TESTDATA = Path(__file__).resolve().parents[1] / "data" / "ollama-templates"


def _template_cases() -> list[Any]:
    return [
        pytest.param(folder.name, expected.name[len("expected-") : -len(".txt")], id=f"{folder.name}/{expected.stem}")
        for folder in sorted(p for p in TESTDATA.iterdir() if p.is_dir())
        for expected in sorted(folder.glob("expected-*.txt"))
    ]


@pytest.mark.parametrize(("folder", "case"), _template_cases())
def test_ollama_template_renders_exactly(folder: str, case: str) -> None:
    conversations = json.loads((TESTDATA / "conversations.json").read_text(encoding="utf-8"))
    template = (TESTDATA / folder / "template.gotmpl").read_text(encoding="utf-8")
    expected = (TESTDATA / folder / f"expected-{case}.txt").read_text(encoding="utf-8")
    assert render(template, messages=conversations[case]) == expected


def test_every_testdata_folder_has_expectations() -> None:
    conversations = json.loads((TESTDATA / "conversations.json").read_text(encoding="utf-8"))
    folders = [p for p in TESTDATA.iterdir() if p.is_dir()]
    assert folders
    for folder in folders:
        cases = {p.name[len("expected-") : -len(".txt")] for p in folder.glob("expected-*.txt")}
        assert cases and cases <= set(conversations), folder.name
        assert uses_messages((folder / "template.gotmpl").read_text(encoding="utf-8")), folder.name


def run(template: str, **values: Any) -> str:
    """Execute a template against plain data, with no Ollama values around it."""
    return gotemplate._execute(parse_template(template).nodes, values)


# ---- the language -----------------------------------------------------------------------------


def test_trim_markers() -> None:
    assert run("a  {{- .X -}}  b", X="x") == "axb"
    assert run("a \n\t{{- .X }} \n b", X="x") == "ax \n b"
    assert run("a {{ .X -}} \n\n b", X="x") == "a xb"
    assert run("{{-3}}") == "-3"  # a minus without a following space is a number, not a marker
    assert run("a \n{{- /* comment */ -}}\n b") == "ab"
    assert run("a {{/* comment */}} b") == "a  b"


def test_fields_missing_keys_and_printing() -> None:
    assert run("{{ .A.B }}|{{ .Missing }}|{{ .A.Missing.Deeper }}", A={"B": "deep"}) == "deep||"
    assert run(
        "{{ .L }} {{ .M }} {{ .F }} {{ .G }} {{ .T }}", L=[1, "x"], M={"b": 2, "a": 1}, F=2.5, G=1e6, T=True
    ) == ("[1 x] map[a:1 b:2] 2.5 1e+06 true")


def test_range_with_else_break_and_continue() -> None:
    assert run("{{ range .L }}[{{ . }}]{{ else }}empty{{ end }}", L=[1, 2]) == "[1][2]"
    assert run("{{ range .L }}[{{ . }}]{{ else }}empty{{ end }}", L=[]) == "empty"
    assert run("{{ range .Missing }}x{{ else }}none{{ end }}") == "none"
    assert run("{{ range $k, $v := .M }}{{ $k }}={{ $v }};{{ end }}", M={"b": 2, "a": 1}) == "a=1;b=2;"
    assert run("{{ range .L }}{{ if eq . 2 }}{{ continue }}{{ end }}{{ . }}{{ end }}", L=[1, 2, 3]) == "13"
    assert run("{{ range .L }}{{ if eq . 2 }}{{ break }}{{ end }}{{ . }}{{ end }}", L=[1, 2, 3]) == "1"


def test_variables() -> None:
    assert run('{{ $x := .A }}{{ $x }}{{ $x = "b" }}{{ $x }}', A="a") == "ab"
    assert run("{{ range $i, $m := .L }}{{ $i }}:{{ $m }} {{ end }}", L=["x", "y"]) == "0:x 1:y "
    assert run("{{ range $m := .L }}{{ $m }}{{ end }}", L=["x", "y"]) == "xy"
    # assignment inside a range reaches the outer variable; $ is the data even inside range
    assert run('{{ $last := "" }}{{ range .L }}{{ $last = . }}{{ end }}{{ $last }}', L=["x", "y"]) == "y"
    assert run("{{ range .L }}{{ $.Name }}{{ . }}{{ end }}", L=[1, 2], Name="n") == "n1n2"
    assert run("{{ with $v := .A }}{{ $v }}{{ . }}{{ end }}", A="a") == "aa"
    with pytest.raises(BadRequest, match="undefined variable"):
        parse_template("{{ if .A }}{{ $y := 1 }}{{ end }}{{ $y }}")  # scoped to the if


def test_if_else_if_with() -> None:
    template = "{{ if .A }}a{{ else if .B }}b{{ else }}c{{ end }}"
    assert [run(template, A=a, B=b) for a, b in [(1, 0), (0, "x"), (0, "")]] == ["a", "b", "c"]
    assert run("{{ with .A }}[{{ . }}]{{ else }}none{{ end }}", A="") == "none"
    assert run("{{ with .A }}[{{ . }}]{{ else with .B }}<{{ . }}>{{ end }}", A="", B="b") == "<b>"
    # Go truthiness: empty string, list, map, zero and false are false; anything else true
    assert run(
        "{{ range .V }}{{ if . }}T{{ else }}F{{ end }}{{ end }}", V=["", [], {}, 0, 0.0, False, None, "x", [0], 1]
    ) == ("FFFFFFFTTT")


def test_eq_with_multiple_arguments_and_comparisons() -> None:
    assert run('{{ eq .R "system" "user" }} {{ eq .R "system" "tool" }}', R="user") == "true false"
    assert run('{{ ne .N 3 }} {{ lt .N 4 }} {{ le 3 3 }} {{ gt "b" "a" }} {{ ge 2.5 .F }}', N=3, F=2.5) == (
        "false true true true true"
    )
    assert run('{{ eq .Missing "x" }}') == "false"
    with pytest.raises(BadRequest, match="incompatible types for comparison"):
        run('{{ eq .N "3" }}', N=3)


def test_and_or_short_circuit_and_return_operands() -> None:
    assert run('{{ and 1 0 2 }}|{{ and 1 2 }}|{{ or 0 "" }}|{{ or 0 "x" 1 }}') == "0|2||x"
    # index .L 10 would fail: and/or stop before evaluating it
    assert run("{{ and .E (index .L 10) }}|{{ or .S (index .L 10) }}", E="", S="s", L=[]) == "|s"
    with pytest.raises(BadRequest, match="index out of range"):
        run("{{ or .E (index .L 10) }}", E="", L=[])
    assert run("{{ not .E }} {{ not .L }}", E="", L=[1]) == "true false"


def test_len_index_slice() -> None:
    values = {"L": [1, 2, 3], "M": {"a": "x"}, "S": "héllo"}
    assert run("{{ len .L }} {{ len .M }} {{ len .S }}", **values) == "3 1 6"  # len of a string counts bytes
    assert run('{{ index .L 1 }} {{ index .M "a" }}[{{ index .M "zz" }}]', **values) == "2 x[]"
    assert run("{{ slice .L 1 }} {{ slice .L 1 2 }} {{ slice .S 0 1 }}", **values) == "[2 3] [2] h"
    assert run("{{ $last := eq (len (slice .L 2)) 1 }}{{ $last }}", **values) == "true"


def test_printf_and_print() -> None:
    assert run(
        '{{ printf "%s|%d|%v|%q|%5s|%-5s|%05d|%x|%.2f|%t|100%%" "a" 42 2.5 "q\\"\\n" "r" "l" 7 255 3.14159 true }}'
    ) == ('a|42|2.5|"q\\"\\n"|    r|l    |00007|ff|3.14|true|100%')
    assert run('{{ printf "%s\\n\\n%s" .A .B }}', A="x", B="y") == "x\n\ny"
    assert run('{{ printf "%d" "x" }}|{{ printf "%s %s" "a" }}|{{ printf "%s" "a" "b" }}') == (
        "%!d(string=x)|a %!s(MISSING)|a%!(EXTRA string=b)"
    )
    assert run('{{ .A | printf "%s!" }}', A="x") == "x!"
    assert run('{{ print 1 2 "a" "b" 3 nil }}') == "1 2ab3 <nil>"


def test_ollama_functions() -> None:
    assert (
        run("{{ json .V }}", V={"b": [1, 2.5, None, True], "a": "<é>\n"})
        == '{"a":"\\u003cé\\u003e\\n","b":[1,2.5,null,true]}'
    )
    assert len(run("{{ currentDate }}")) == len("2006-01-02")
    assert run("{{ toTypeScriptType .X }}", X="not a property") == "any"


def test_syntax_errors_are_bad_requests_with_one_line_messages() -> None:
    cases = {
        "Hello {{ .Prompt ": "unclosed action",
        "{{ nope .Prompt }}": 'function "nope" not defined',
        "{{ if .System }}never closed": "missing {{end}}",
        "{{ range .Messages }}{{ .Content }}": "missing {{end}}",
        "text {{ end }}": "unexpected {{end}}",
        "{{ else }}": "unexpected {{else}}",
        "{{/* never closed": "unclosed comment",
        "{{ $x }}": 'undefined variable "$x"',
        "{{ break }}": "{{break}} outside {{range}}",
        "{{ if }}{{ end }}": "missing value for if",
        '{{ "open }}': "unterminated quoted string",
        "{{ .A | 3 }}": "non executable command",
        '{{ define "x" }}{{ end }}': "not supported",
    }
    for source, message in cases.items():
        with pytest.raises(BadRequest) as info:
            parse_template(source)
        assert message in str(info.value), source
        assert "\n" not in str(info.value)
    with pytest.raises(BadRequest, match="line 3"):
        parse_template("ok\nstill ok\n{{ if .X }}")


def test_execution_errors_are_bad_requests() -> None:
    with pytest.raises(BadRequest, match="can't evaluate field upper"):
        run("{{ .S.upper }}", S="x")
    with pytest.raises(BadRequest, match="wrong number of args for len"):
        run("{{ len }}")


# ---- Ollama's Execute -------------------------------------------------------------------------

CONVERSATION = [
    {"role": "user", "content": "Hello friend!"},
    {"role": "assistant", "content": "Hello human!"},
    {"role": "user", "content": "What is your name?"},
]
SYSTEM = [{"role": "system", "content": "You are a helpful assistant!"}]
MISTRAL = {
    "no response": "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] ",
    "response": "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] {{ .Response }}",
    "messages": "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}\n{{- range .Messages }}\n"
    '{{- if eq .Role "user" }}{{ .Content }}[/INST] {{ else if eq .Role "assistant" }}{{ .Content }}[INST] {{ end }}\n'
    "{{- end }}",
}


@pytest.mark.parametrize("variant", MISTRAL)
def test_legacy_and_messages_templates_agree_as_in_ollama(variant: str) -> None:
    # Ollama's TestExecuteWithMessages: a legacy template is run once per earlier turn, then cut after .Response
    template = MISTRAL[variant]
    assert render(template, messages=CONVERSATION) == (
        "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] "
    )
    assert render(template, messages=SYSTEM + CONVERSATION) == (
        "[INST] You are a helpful assistant!\n\nHello friend![/INST] Hello human![INST] What is your name?[/INST] "
    )


def test_legacy_template_prefill_and_chatml() -> None:
    prefill = CONVERSATION + [{"role": "assistant", "content": "My name is Ollama and I"}]
    for template in ("[INST] {{ .Prompt }}[/INST] ", "[INST] {{ .Prompt }}[/INST] {{ .Response }}"):
        assert render(template, messages=prefill) == (
            "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] My name is Ollama and I"
        )
    chatml = (
        "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}<|im_start|>user\n"
        "{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
    )
    assert render(chatml, messages=SYSTEM + CONVERSATION) == (
        "<|im_start|>system\nYou are a helpful assistant!<|im_end|>\n<|im_start|>user\nHello friend!<|im_end|>\n"
        "<|im_start|>assistant\nHello human!<|im_end|>\n<|im_start|>user\nWhat is your name?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert not uses_messages(chatml) and uses_messages(MISTRAL["messages"])


def test_system_prompt_response_and_suffix_arguments() -> None:
    template = "{{ range .Messages }}<{{ .Role }}:{{ .Content }}>{{ end }}"
    assert render(template, messages=[], system="S", prompt="P", response="R") == "<system:S><user:P><assistant:R>"
    fim = "{{- if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>\n{{- else }}{{ .Prompt }}\n{{- end }}"
    assert render(fim, messages=[{"role": "user", "content": "hello"}]) == "hello"
    assert render(fim, messages=[], prompt="def add(", suffix="return x") == "<PRE> def add( <SUF>return x <MID>"


def test_collate_merges_consecutive_roles_except_tools() -> None:
    template = "{{ .System }}|{{ range .Messages }}<{{ .Role }}:{{ .Content }}>{{ end }}"
    messages = [
        {"role": "system", "content": "s1"},
        {"role": "system", "content": "s2"},
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
        {"role": "tool", "content": "t1"},
        {"role": "tool", "content": "t2"},
    ]
    assert render(template, messages=messages) == "s1\n\ns2|<system:s1\n\ns2><user:a\n\nb><tool:t1><tool:t2>"


def test_tools_tool_calls_and_think() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather",
                "parameters": {
                    "type": "object",
                    "required": ["city"],
                    "properties": {
                        "city": {"type": "string", "description": "City"},
                        "days": {"type": ["integer", "null"]},
                    },
                },
            },
        }
    ]
    messages = [
        {"role": "user", "content": "Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}}],
        },
    ]
    template = (
        "{{ range .Tools }}{{ .Function }}\n"
        "{{ range $name, $p := .Function.Parameters.Properties }}"
        "{{ $name }}: {{ $p.Type }} = {{ toTypeScriptType $p }}\n{{ end }}{{ end }}"
        "{{ range .Messages }}{{ range .ToolCalls }}{{ .Function.Name }}{{ .Function.Arguments }}{{ end }}{{ end }}"
        "|{{ .Think }} {{ .ThinkLevel }} {{ .IsThinkSet }}"
    )
    assert render(template, messages=messages, tools=tools, think="high") == (
        '{"name":"get_weather","description":"Weather","parameters":{"type":"object","required":["city"],'
        '"properties":{"city":{"type":"string","description":"City"},"days":{"type":["integer","null"]}}}}\n'
        "city: string = string\ndays: [integer null] = number | null\n"
        'get_weather{"city":"Paris","days":3}|true high true'
    )
    assert render("{{ .Messages }}{{ .Tools }} {{ .Think }} {{ .IsThinkSet }}", messages=[]) == "[]null false false"


# ---- safety -----------------------------------------------------------------------------------


def test_templates_cannot_reach_python_attributes() -> None:
    template = "{{ range .Messages }}[{{ .__class__ }}{{ .role }}{{ .fields }}]{{ end }}"
    assert render(template, messages=[{"role": "user", "content": "x"}]) == "[]"
    with pytest.raises(BadRequest, match="can't evaluate field"):
        render("{{ range .Messages }}{{ .Content.__class__ }}{{ end }}", messages=[{"role": "user", "content": "x"}])


def test_nesting_work_and_output_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BadRequest, match="nested too deeply"):
        parse_template("{{ if 1 }}" * 200 + "{{ end }}" * 200)
    with pytest.raises(BadRequest, match="nested too deeply"):
        parse_template("{{ " + "(" * 200 + "1" + ")" * 200 + " }}")
    from corral.chat.gotemplate import execute

    monkeypatch.setattr(execute, "_MAX_STEPS", 10_000)
    with pytest.raises(BadRequest, match="too many steps"):
        run("{{ range 1000000000 }}{{ end }}")
    with pytest.raises(BadRequest, match="too large"):
        run('{{ $x := "ab" }}{{ range 64 }}{{ $x = printf "%s%s" $x $x }}{{ end }}')
