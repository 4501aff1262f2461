"""Modelfile parsing, typed values, errors with line numbers, rendering and FROM path resolution."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral.errors import BadRequest, ModelfileError
from corral.models.modelfile import NO_FROM, Command, Modelfile, parse, render, render_model, resolve_from
from corral.types import Options

CHATML = """{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ range .Messages }}{{ if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
<|im_start|>assistant
{{ else if eq .Role "assistant" }}{{ .Content }}<|im_end|>
{{ end }}{{ end }}"""


def error_of(text: str) -> ModelfileError:
    with pytest.raises(ModelfileError) as info:
        parse(text)
    return info.value


# --- every instruction -------------------------------------------------------------------------


def test_full_modelfile() -> None:
    mf = parse(
        f'''# a comment
FROM smollm2:135m
REQUIRES 0.5.0
ADAPTER ./lora.gguf
TEMPLATE """{CHATML}"""
SYSTEM You are a pirate.
PARAMETER temperature 0.7
PARAMETER num_ctx 4096
PARAMETER stop "<|im_end|>"
PARAMETER stop <|im_start|>
MESSAGE user Is Toronto in Canada?
MESSAGE assistant yes
LICENSE MIT
LICENSE """Apache
2.0"""
'''
    )
    assert mf.from_ == "smollm2:135m"
    assert mf.requires == "0.5.0"
    assert mf.adapters == ["./lora.gguf"]
    assert mf.template == CHATML
    assert mf.system == "You are a pirate."
    opts = mf.parameters()
    assert opts.temperature == 0.7
    assert opts.num_ctx == 4096
    assert opts.stop == ["<|im_end|>", "<|im_start|>"]
    assert mf.messages == [("user", "Is Toronto in Canada?"), ("assistant", "yes")]
    assert mf.licenses == ["MIT", "Apache\n2.0"]


def test_commands_and_lines() -> None:
    mf = parse("\n# c\nFROM base\n\nPARAMETER top_k 40\nMESSAGE system be brief\n")
    assert mf.commands == [
        Command("from", "base"),
        Command("parameter", "top_k 40"),
        Command("message", "system be brief"),
    ]
    assert [c.line for c in mf.commands] == [3, 5, 6]
    assert mf.commands[1].split() == ("top_k", "40")


def test_only_from() -> None:
    mf = parse("FROM llama3.2")
    assert mf.from_ == "llama3.2"
    assert mf.template is None and mf.system is None and mf.requires is None
    assert mf.adapters == [] and mf.licenses == [] and mf.messages == []
    assert mf.parameters() == Options()


def test_instructions_are_case_insensitive() -> None:
    mf = parse('from base\nParameter seed 42\nsYsTeM hi\ntemplate """t"""\nMessage user u\nlicense l\nadapter a.gguf\n')
    assert mf.from_ == "base"
    assert mf.parameters().seed == 42
    assert mf.system == "hi"
    assert mf.template == "t"
    assert mf.messages == [("user", "u")]
    assert mf.licenses == ["l"]
    assert mf.adapters == ["a.gguf"]


def test_comments_blank_lines_and_indentation() -> None:
    mf = parse("\n\n   # indented comment\n#FROM commented-out\n\t\n  FROM  base  \n   SYSTEM   spaced out   \n# end")
    assert mf.from_ == "base"
    assert mf.system == "spaced out"
    assert len(mf.commands) == 2


def test_hash_inside_a_value_is_not_a_comment() -> None:
    mf = parse('FROM base\nSYSTEM use # for comments\nTEMPLATE """\n# not a comment\n"""')
    assert mf.system == "use # for comments"
    assert mf.template == "\n# not a comment\n"


def test_later_template_and_system_win() -> None:
    mf = parse("FROM base\nSYSTEM one\nSYSTEM two\nTEMPLATE a\nTEMPLATE b")
    assert mf.system == "two"
    assert mf.template == "b"


def test_crlf_and_bom() -> None:
    mf = parse('\ufeffFROM base\r\nSYSTEM """a\r\nb"""\r\nPARAMETER top_k 3\r\n')
    assert mf.from_ == "base"
    assert mf.system == "a\nb"
    assert mf.parameters().top_k == 3


def test_tabs_separate_words() -> None:
    mf = parse("FROM\tbase\nPARAMETER\tnum_ctx\t512\nMESSAGE\tuser\thi")
    assert mf.from_ == "base"
    assert mf.parameters().num_ctx == 512
    assert mf.messages == [("user", "hi")]


# --- quoting -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(r'"He said \"hi\" \\ bye"', 'He said "hi" \\ bye', id="double-quoted-with-escapes"),
        pytest.param('"  padded\\n  "', "  padded\\n  ", id="double-quoted-keeps-spaces-and-other-backslashes"),
        pytest.param('""', "", id="double-quoted-empty"),
        pytest.param('"""Say "hi" to {{ .Name }}"""', 'Say "hi" to {{ .Name }}', id="triple-quoted-inner-quotes"),
        pytest.param('"""say "hi""""', 'say "hi"', id="triple-quoted-ending-in-a-quote"),
        pytest.param('"""\n{{ .Prompt }}\n"""', "\n{{ .Prompt }}\n", id="triple-quoted-from-its-own-line"),
        pytest.param('""""""', "", id="triple-quoted-empty"),
        pytest.param('He said "hi"', 'He said "hi"', id="bare-keeps-inner-quotes"),
    ],
)
def test_quoted_values(value: str, expected: str) -> None:
    assert parse(f"FROM base\nSYSTEM {value}").system == expected
    assert parse(f"FROM base\nTEMPLATE {value}").template == expected


def test_double_quoted_may_span_lines() -> None:
    # ollama show writes multi-line values without quotes in them as "..."
    mf = parse('FROM base\nSYSTEM "line one\nline two"\nPARAMETER top_k 1')
    assert mf.system == "line one\nline two"
    assert mf.parameters().top_k == 1


def test_triple_quoted_multiline_is_raw() -> None:
    text = 'FROM base\nTEMPLATE """  first\n\tsecond \\n "q"\n\nlast  """  \nSYSTEM after'
    mf = parse(text)
    assert mf.template == '  first\n\tsecond \\n "q"\n\nlast  '
    assert mf.system == "after"
    assert [c.line for c in mf.commands] == [1, 2, 6]


def test_quoted_from_path(tmp_path: Path) -> None:
    mf = parse('FROM "./my model.gguf"')
    assert mf.from_ == "./my model.gguf"
    assert resolve_from(mf.from_, tmp_path) == tmp_path / "my model.gguf"


# --- PARAMETER types ---------------------------------------------------------------------------


def test_parameter_type_conversion() -> None:
    opts = parse(
        "FROM base\n"
        "PARAMETER num_ctx 8192\n"
        "PARAMETER num_predict -1\n"
        "PARAMETER seed +7\n"
        "PARAMETER temperature 1\n"
        "PARAMETER top_p .9\n"
        "PARAMETER repeat_penalty 1.1e0\n"
        "PARAMETER use_mmap false\n"
    ).parameters()
    assert opts.num_ctx == 8192 and isinstance(opts.num_ctx, int)
    assert opts.num_predict == -1
    assert opts.seed == 7
    assert opts.temperature == 1.0 and isinstance(opts.temperature, float)
    assert opts.top_p == 0.9
    assert opts.repeat_penalty == 1.1
    assert opts.use_mmap is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("True", True),
        ("TRUE", True),
        ("1", True),
        ("t", True),
        ("false", False),
        ("False", False),
        ("0", False),
        ("F", False),
    ],
)
def test_bool_spellings(text: str, expected: bool) -> None:
    assert parse(f"FROM base\nPARAMETER use_mmap {text}").parameters().use_mmap is expected


def test_stop_is_repeatable_and_keeps_order() -> None:
    opts = parse(
        'FROM base\nPARAMETER stop "</s>"\nPARAMETER num_ctx 1\nPARAMETER stop User:\nPARAMETER stop " spaced "'
    ).parameters()
    assert opts.stop == ["</s>", "User:", " spaced "]


def test_single_stop_is_a_list() -> None:
    assert parse("FROM base\nPARAMETER stop <|eot_id|>").parameters().stop == ["<|eot_id|>"]


def test_later_scalar_parameter_wins() -> None:
    assert parse("FROM base\nPARAMETER temperature 0.1\nPARAMETER temperature 0.9").parameters().temperature == 0.9


def test_parameters_returns_options() -> None:
    opts = parse("FROM base\nPARAMETER top_k 20").parameters()
    assert isinstance(opts, Options)
    assert opts.merged(Options(top_k=5)).top_k == 5


# --- errors and their lines --------------------------------------------------------------------


def test_error_is_a_bad_request() -> None:
    err = error_of("FROM base\nBOGUS x")
    assert isinstance(err, BadRequest)
    assert err.status_code == 400


def test_unknown_instruction() -> None:
    err = error_of("FROM base\n\n# note\nINSTRUCT do it")
    assert err.line == 4
    assert str(err) == "line 4: unknown instruction 'INSTRUCT'"


def test_unknown_instruction_keeps_the_users_spelling() -> None:
    assert "unknown instruction 'Frm'" in str(error_of("Frm base"))


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("FROM base\nPARAMETER temperature 0.5\nPARAMETER mirostat 2", 3, "line 3: unknown parameter 'mirostat'"),
        ("FROM base\n# c\nPARAMETER num_ctx big", 3, "must be an integer"),
        ("FROM base\n# c\nPARAMETER num_ctx 4096.5", 3, "must be an integer"),
        ("FROM base\n# c\nPARAMETER temperature warm", 3, "must be a number"),
        ("FROM base\n# c\nPARAMETER use_mmap maybe", 3, "must be true or false"),
        ("FROM base\nPARAMETER top_p 0.5\nPARAMETER top_p 1.5", 3, "top_p"),
        ("FROM base\nPARAMETER temperature", 2, "PARAMETER needs a name and a value"),
        ("FROM base\nPARAMETER\n", 2, "PARAMETER needs a name and a value"),
        ("FROM base\nPARAMETER stop   \n", 2, "PARAMETER needs a name and a value"),
        ('FROM ""', 1, "FROM needs a value"),
        ("FROM base\nMESSAGE user", 2, "MESSAGE needs a role and content"),
        ("FROM base\nMESSAGE user hi\nMESSAGE robot beep", 3, "invalid message role 'robot'"),
        pytest.param("FROM base\nMESSAGE User hi", 2, "invalid message role 'User'", id="roles-are-lower-case"),
        ('FROM base\nSYSTEM ok\nTEMPLATE """{{ .Prompt }}\nmore\nPARAMETER top_k 1\n', 3, 'unterminated """'),
        ('FROM base\n\nSYSTEM "never closed\nPARAMETER top_k 1', 3, "unterminated quote"),
        pytest.param('FROM base\nSYSTEM "open \\"', 2, "unterminated quote", id="an-escaped-quote-does-not-close"),
        ('FROM base\nSYSTEM """one\ntwo""" three\nSYSTEM """four"""', 3, "after the closing"),
        ('FROM base\nSYSTEM "a" b', 2, "after the closing"),
        ("FROM a\nSYSTEM s\nFROM b", 3, "line 1"),
        ("FROM base\n\nREQUIRES soon", 3, "REQUIRES"),
    ],
)
def test_error_names_its_line(text: str, line: int, message: str) -> None:
    """The line a mistake is on (a quoted value's first line), and what is wrong."""
    err = error_of(text)
    assert err.line == line
    assert message in str(err)


@pytest.mark.parametrize("word", ["FROM", "SYSTEM", "TEMPLATE", "ADAPTER", "LICENSE", "REQUIRES"])
def test_missing_argument(word: str) -> None:
    text = f"{word}\n" if word == "FROM" else f"FROM base\n\n{word}   \n"
    err = error_of(text)
    assert err.line == (1 if word == "FROM" else 3)
    assert f"{word} needs a value" in str(err)


def test_no_from() -> None:
    for text in ["", "# only a comment\n", "SYSTEM hi\nPARAMETER top_k 1"]:
        err = error_of(text)
        assert str(err) == NO_FROM
        assert err.line is None


@pytest.mark.parametrize(
    ("value", "expected"), [("0.5.0", "0.5.0"), ("v0.14.1", "0.14.1"), ("1", "1"), ("0.6.0-rc1", "0.6.0-rc1")]
)
def test_requires(value: str, expected: str) -> None:
    assert parse(f"FROM base\nREQUIRES {value}").requires == expected


def test_hand_built_modelfile_errors() -> None:
    assert str(pytest.raises(ModelfileError, lambda: Modelfile([]).from_).value) == NO_FROM
    bad = Modelfile([Command("from", "x"), Command("parameter", "nope 1")])
    with pytest.raises(ModelfileError, match="unknown parameter 'nope'"):
        bad.parameters()
    with pytest.raises(ModelfileError, match="invalid message role"):
        _ = Modelfile([Command("from", "x"), Command("message", "tool hi")]).messages


# --- rendering and round trips -----------------------------------------------------------------

RICH_SYSTEM = 'You are "Corral".\n\nAnswer in {braces} and \\backslashes\\.\n  Indented line  '


def rich() -> str:
    return render_model(
        "smollm2:135m",
        parameters=Options(
            num_ctx=4096,
            temperature=0.2,
            top_p=0.95,
            seed=-1,
            use_mmap=True,
            stop=["<|im_start|>", "<|im_end|>", 'say "stop"', " lead", "back\\slash"],
        ),
        template=CHATML,
        system=RICH_SYSTEM,
        adapters=["/adapters/lora one.gguf"],
        licenses=["MIT License\n\nCopyright (c) 2024", "Apache-2.0"],
        messages=[("system", "Be terse."), ("user", 'What is "2+2"?'), ("assistant", "4\n")],
        requires="0.5.0",
        header='Modelfile generated by "corral show"\n'
        "To build a new Modelfile based on this, replace FROM with:\nFROM smollm2:135m",
    )


def test_render_rich_model_round_trips() -> None:
    text = rich()
    mf = parse(text)
    assert mf.from_ == "smollm2:135m"
    assert mf.template == CHATML
    assert mf.system == RICH_SYSTEM
    assert mf.adapters == ["/adapters/lora one.gguf"]
    assert mf.licenses == ["MIT License\n\nCopyright (c) 2024", "Apache-2.0"]
    assert mf.messages == [("system", "Be terse."), ("user", 'What is "2+2"?'), ("assistant", "4\n")]
    assert mf.requires == "0.5.0"
    assert mf.parameters() == Options(
        num_ctx=4096,
        temperature=0.2,
        top_p=0.95,
        seed=-1,
        use_mmap=True,
        stop=["<|im_start|>", "<|im_end|>", 'say "stop"', " lead", "back\\slash"],
    )
    assert parse(render(mf)) == mf
    assert render(mf, header="x") == render(parse(render(mf, header="x")), header="x")


def test_render_looks_like_ollama_show() -> None:
    text = rich()
    lines = text.splitlines()
    assert lines[0] == '# Modelfile generated by "corral show"'
    assert lines[2] == "# FROM smollm2:135m"
    assert lines[3] == ""
    assert lines[4] == "FROM smollm2:135m"
    assert f'TEMPLATE """{CHATML}"""' in text
    assert 'SYSTEM """You are "Corral".' in text
    assert 'PARAMETER stop "<|im_start|>"' in lines
    assert 'PARAMETER stop "<|im_end|>"' in lines
    assert 'PARAMETER stop "say \\"stop\\""' in lines
    assert "PARAMETER num_ctx 4096" in lines
    assert "PARAMETER temperature 0.2" in lines
    assert "PARAMETER use_mmap true" in lines
    assert 'MESSAGE user """What is "2+2"?"""' in lines
    assert 'LICENSE """Apache-2.0"""' in lines
    assert text.endswith("\n")
    order = [
        line.split()[0] for line in lines if line and not line.startswith((" ", "#")) and line.split()[0].isupper()
    ]
    assert order.index("FROM") < order.index("TEMPLATE") < order.index("SYSTEM") < order.index("PARAMETER")
    assert order.index("PARAMETER") < order.index("MESSAGE") < order.index("LICENSE")


def test_render_whole_numbers_without_a_point() -> None:
    text = render_model("base", parameters=Options(temperature=1.0, repeat_penalty=1.15))
    assert "PARAMETER temperature 1\n" in text
    assert "PARAMETER repeat_penalty 1.15\n" in text
    assert parse(text).parameters().temperature == 1.0


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        '"',
        '""',
        '"""',
        'a"""b',
        'ends with """',
        '"""starts',
        "\\",
        'back\\"slash',
        "trailing newline\n",
        "\nleading newline",
        "x\n\n\ny",
        '"quoted"',
        'say "hi"',
        "  two  ",
        "# not a comment",
        'TEMPLATE """x"""',
        'multi\nline with """ inside\n"',
    ],
)
def test_awkward_values_round_trip(value: str) -> None:
    mf = Modelfile.build(
        "base",
        system=value,
        template=value,
        licenses=[value],
        messages=[("user", value)],
        parameters=Options(stop=[value]),
    )
    again = parse(render(mf))
    assert again == mf
    assert again.system == value and again.template == value and again.licenses == [value]
    assert again.messages == [("user", value)]
    assert again.parameters().stop == [value]


def test_render_preserves_command_order() -> None:
    text = "FROM base\nPARAMETER stop a\nSYSTEM s\nPARAMETER stop b\nLICENSE l\n"
    assert render(parse(text)) == 'FROM base\nPARAMETER stop "a"\nSYSTEM """s"""\nPARAMETER stop "b"\nLICENSE """l"""\n'


def test_render_bare_from_and_quoted_when_needed() -> None:
    assert render_model("./model.gguf").strip() == "FROM ./model.gguf"
    assert render_model(" spaced.gguf").strip() == 'FROM " spaced.gguf"'
    assert parse(render_model(" spaced.gguf")).from_ == " spaced.gguf"


def test_line_is_not_part_of_equality() -> None:
    assert Command("from", "x", 1) == Command("from", "x", 9)


def test_render_model_rejects_bad_roles() -> None:
    with pytest.raises(ModelfileError):
        render_model("base", messages=[("tool", "x")])


def test_ollama_style_modelfile_parses() -> None:
    text = (
        "# ollama modelfile auto-generated by llamafactory\n\nFROM .\n\n"
        f'TEMPLATE """{CHATML}"""\n\n'
        'PARAMETER stop "<|im_end|>"\nPARAMETER num_ctx 4096\n'
    )
    mf = parse(text)
    assert mf.from_ == "."
    assert mf.template == CHATML
    assert mf.parameters() == Options(stop=["<|im_end|>"], num_ctx=4096)


# --- resolve_from ------------------------------------------------------------------------------


def test_resolve_model_names(tmp_path: Path) -> None:
    for name in ["smollm2:135m", "llama3.2", "library/qwen2.5:0.5b", "registry.ollama.ai/library/x:1"]:
        assert resolve_from(name, tmp_path) is None
    assert resolve_from("", tmp_path) is None


def test_resolve_relative_paths(tmp_path: Path) -> None:
    assert resolve_from("./m.gguf", tmp_path) == tmp_path / "m.gguf"
    assert resolve_from("../up/m.gguf", tmp_path / "sub") == tmp_path / "up" / "m.gguf"
    assert resolve_from("models/m.gguf", tmp_path) == tmp_path / "models" / "m.gguf"  # .gguf ending
    assert resolve_from(".", tmp_path) == tmp_path


def test_resolve_existing_file_without_hints(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    assert resolve_from("weights", tmp_path) == tmp_path / "weights"
    assert resolve_from("other", tmp_path) is None


def test_resolve_absolute_and_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_from("/opt/models/m.gguf", tmp_path) == Path("/opt/models/m.gguf")
    assert resolve_from("/opt/models/../m.bin", tmp_path) == Path("/opt/m.bin")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_from("~/models/m.gguf", Path("/elsewhere")) == tmp_path / "home" / "models" / "m.gguf"
    assert resolve_from("~", Path("/elsewhere")) == tmp_path / "home"


def test_resolve_relative_modelfile_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = resolve_from("./m.gguf", Path("sub"))
    assert result is not None and result.is_absolute()
    assert result == tmp_path / "sub" / "m.gguf"
    assert os.path.isabs(str(result))
