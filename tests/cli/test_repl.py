"""`corral run MODEL` as a chat REPL: the pieces in-process, then the real thing in a pseudo-terminal.

The slow tests spawn ``python -m corral.cli.main run`` under pexpect against a real ``corral serve``
and type at it as a user would. Each prompt is found by its bracketed-paste switch: prompt_toolkit
turns it on (ESC[?2004h) as a prompt starts and off (ESC[?2004l) once the line is sent, so what lies
between an "off" and the next "on" is exactly what the command printed.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.cli import repl_commands
from corral.cli.repl import Session, Wrapper, needs_more, unquote
from corral.cli.repl_commands import ExitRepl, run_command
from corral.types import ChatResponse, Message, ShowResponse

MODEL = "smollm2:135m"
PASTE_ON, PASTE_OFF = "\x1b[?2004h", "\x1b[?2004l"
PLACEHOLDER = "Send a message (/? for help)"


# ---- a tiny terminal, enough to read back what the REPL drew --------------------------------------

_CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")


def render(raw: str) -> list[str]:
    """The lines a terminal shows for ``raw``: carriage returns, ESC[nD/ESC[nC moves, ESC[K erases;
    other escape sequences are dropped. Lines longer than the terminal are kept whole (no autowrap)."""
    lines = [""]
    col = 0
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\x1b":
            m = _CSI.match(raw, i)
            if m:
                arg, op = m.groups()
                n = int(arg) if arg.isdigit() else 1
                if op == "D":
                    col = max(0, col - n)
                elif op == "C":
                    col += n
                elif op == "K":
                    lines[-1] = lines[-1][:col]
                i = m.end()
                continue
            i += 1
            continue
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append("")
            col = 0
        else:
            line = lines[-1].ljust(col)
            lines[-1] = line[:col] + ch + line[col + 1 :]
            col += 1
        i += 1
    return lines


def _spinner_free(lines: list[str]) -> list[str]:
    return [line.rstrip() for line in lines]


# ---- input: \"\"\" blocks ---------------------------------------------------------------------------


def test_triple_quotes_open_a_block_until_they_close() -> None:
    assert not needs_more("hello")
    assert not needs_more('what does """ mean in Python?')
    assert needs_more('"""')
    assert needs_more('"""\nfirst line')
    assert needs_more('"""first line\nsecond')
    assert not needs_more('"""\nfirst\nsecond\n"""')
    assert not needs_more('"""one line"""')
    assert needs_more('/set system """')
    assert not needs_more('/set system """\nBe brief.\n"""')
    assert unquote('"""\nfirst\nsecond\n"""') == "first\nsecond"
    assert unquote('"""one line"""') == "one line"
    assert unquote('"""  indented\n  code\n"""') == "  indented\n  code"
    assert unquote("plain") == "plain"


# ---- output: word wrap ----------------------------------------------------------------------------


def _wrapped(text: str, width: int, pieces: int = 7) -> list[str]:
    out = io.StringIO()
    w = Wrapper(out, width)
    step = max(1, len(text) // pieces)
    for i in range(0, len(text), step):  # streamed in uneven pieces, as tokens come
        w.write(text[i : i + step])
    w.end()
    return [line.rstrip() for line in render(out.getvalue())[:-1]]


def test_wrapping_breaks_at_spaces_and_keeps_every_word_whole() -> None:
    rng = random.Random(7)
    words = ["a", "to", "the", "model", "streams", "tokens", "quickly", "wrapping", "supercalifragilistic"]
    for width in (12, 20, 33, 80):
        for _ in range(30):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 60)))
            lines = _wrapped(text, width, pieces=rng.randint(1, 40))
            assert all(len(line) <= width - 1 for line in lines), (width, lines)
            assert "".join("".join(lines).split()) == "".join(text.split())  # nothing lost
            if max(len(w) for w in text.split()) <= width - 1:
                assert " ".join(" ".join(lines).split()) == text  # no word split
            assert len(lines) > 1 or len(text) <= width - 1


def test_wrapping_keeps_newlines_breaks_overlong_words_and_can_be_off() -> None:
    assert _wrapped("one\n\ntwo three", 20) == ["one", "", "two three"]
    assert _wrapped("x" * 25, 10) == ["x" * 9, "x" * 9, "x" * 7]
    assert _wrapped("ab " + "y" * 12, 10) == ["ab", "y" * 9, "yyy"]
    out = io.StringIO()
    w = Wrapper(out, None)
    w.write("a long line " * 20)
    w.end()
    assert out.getvalue() == "a long line " * 20 + "\n"


def test_wide_characters_count_two_columns() -> None:
    lines = _wrapped("漢字 漢字 漢字 漢字", 10)
    assert lines == ["漢字 漢字", "漢字 漢字"]


# ---- commands against a fake client ---------------------------------------------------------------


class FakeStream:
    def __init__(self, pieces: list[str], interrupt_after: int | None = None, thoughts: tuple[str, ...] = ()) -> None:
        self.pieces, self.interrupt_after, self.closed = pieces, interrupt_after, False
        self.thoughts = thoughts

    def __iter__(self) -> Iterator[ChatResponse]:
        for thought in self.thoughts:
            yield ChatResponse(model=MODEL, message=Message(role="assistant", content="", thinking=thought), done=False)
        for i, piece in enumerate(self.pieces):
            if self.interrupt_after is not None and i == self.interrupt_after:
                raise KeyboardInterrupt
            yield ChatResponse(model=MODEL, message=Message(role="assistant", content=piece), done=False)
        done = Message(role="assistant", content="")
        yield ChatResponse(model=MODEL, message=done, done=True, eval_count=len(self.pieces))

    def close(self) -> None:
        self.closed = True


class FakeClient:
    def __init__(self) -> None:
        self.chats: list[dict[str, Any]] = []
        self.created: list[tuple[str, dict[str, Any]]] = []
        self.streams: list[FakeStream] = []
        self.interrupt_after: int | None = None
        self.thoughts: tuple[str, ...] = ()
        self.max_messages: int | None = None  # more than this many messages: "the prompt does not fit"

    def chat(self, model: str, messages: list[dict[str, Any]], stream: bool = False, **kw: Any) -> Any:
        self.chats.append({"model": model, "messages": messages, **kw})
        if not messages:
            if model == "missing":
                from corral.client import ResponseError

                raise ResponseError(f"model '{model}' not found", 404)
            return ChatResponse(model=model, done=True)
        if self.max_messages is not None and len(messages) > self.max_messages:
            from corral.client import ResponseError

            raise ResponseError(
                f"the prompt is {100 * len(messages)} tokens, more than the context of {100 * self.max_messages} "
                "(raise num_ctx or shorten the prompt)",
                400,
            )
        s = FakeStream(["Hello", " there", ", friend."], self.interrupt_after, self.thoughts if kw.get("think") else ())
        self.streams.append(s)
        return s

    def show(self, model: str, **kw: Any) -> ShowResponse:
        return ShowResponse(
            modelfile='# Modelfile generated by "corral show"\nFROM /blobs/sha256-abc\nSYSTEM model system\n'
            "PARAMETER temperature 0.7\nMESSAGE user earlier\n",
            parameters="temperature                    0.7",
            template="{{ .Prompt }}",
            system="model system",
            messages=[Message(role="user", content="earlier"), Message(role="assistant", content="reply")],
        )

    def create(self, model: str, **kw: Any) -> None:
        self.created.append((model, kw))


@pytest.fixture
def session() -> Session:
    s = Session(FakeClient(), MODEL, out=io.StringIO())
    s.refresh()
    return s


def _run(session: Session, line: str, capsys: pytest.CaptureFixture[str]) -> str:
    run_command(session, line)
    return capsys.readouterr().out


def test_set_parameter_types_values_as_options_declares_them(
    session: Session, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "Set parameter 'temperature' to '0'" in _run(session, "/set parameter temperature 0", capsys)
    _run(session, "/set parameter num_predict 12", capsys)
    _run(session, "/set parameter use_mmap false", capsys)
    assert "to '<a>, <b>'" in _run(session, "/set parameter stop <a> <b>", capsys)
    assert session.options == {"temperature": 0.0, "num_predict": 12, "use_mmap": False, "stop": ["<a>", "<b>"]}
    assert isinstance(session.options["num_predict"], int)
    bad = _run(session, "/set parameter num_predict lots", capsys)
    assert "num_predict" in bad and session.options["num_predict"] == 12
    assert "takes one value" in _run(session, "/set parameter top_k 1 2", capsys)
    unknown = _run(session, "/set parameter warmth 3", capsys)
    assert "Unknown parameter 'warmth'" in unknown and "temperature" in unknown
    listing = _run(session, "/set parameter", capsys)
    assert "/set parameter num_ctx <int>" in listing and "/set parameter stop <string>" in listing


def test_set_modes_system_and_format(session: Session, capsys: pytest.CaptureFixture[str]) -> None:
    assert "Set system message." in _run(session, "/set system You are terse.", capsys)
    assert session.system == "You are terse."
    _run(session, '/set system """\nLine one.\nLine two.\n"""', capsys)
    assert session.system == "Line one.\nLine two."
    for line, attr, value in [
        ("/set verbose", "verbose", True),
        ("/set quiet", "verbose", False),
        ("/set nowordwrap", "wordwrap", False),
        ("/set wordwrap", "wordwrap", True),
        ("/set nohistory", "history", False),
        ("/set history", "history", True),
        ("/set format json", "format", "json"),
        ("/set noformat", "format", None),
        ("/set format json", "format", "json"),
        ("/set format noformat", "format", None),
    ]:
        _run(session, line, capsys)
        assert getattr(session, attr) == value, line
    assert "/set parameter" in _run(session, "/set", capsys)
    assert "Unknown command '/set colour'" in _run(session, "/set colour blue", capsys)


def test_show_prefers_the_session_over_the_model(session: Session, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(session, "/show system", capsys).strip() == "model system"
    assert _run(session, "/show template", capsys).strip() == "{{ .Prompt }}"
    assert "No license" in _run(session, "/show license", capsys)
    _run(session, "/set system Be brief.", capsys)
    _run(session, "/set parameter temperature 0", capsys)
    assert _run(session, "/show system", capsys).strip() == "Be brief."
    params = _run(session, "/show parameters", capsys)
    assert "Model defined parameters:\n  temperature" in params
    assert re.search(r"User defined parameters:\n  temperature\s+0\n", params)
    session.ask("hi")
    modelfile = _run(session, "/show modelfile", capsys)
    assert 'SYSTEM """Be brief."""' in modelfile and "PARAMETER temperature 0\n" in modelfile
    assert 'MESSAGE user """earlier"""\nMESSAGE user """hi"""\n' in modelfile
    assert 'MESSAGE assistant """Hello there, friend."""' in modelfile
    assert "Available Commands" in _run(session, "/show nonsense", capsys)


def test_ask_keeps_the_turn_and_an_interrupt_leaves_it_out(session: Session) -> None:
    client: FakeClient = session.client
    session.system = "Be brief."
    assert session.ask("hi") == "Hello there, friend."
    assert session.messages == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello there, friend."},
    ]
    sent = client.chats[-1]["messages"]
    assert sent[0] == {"role": "system", "content": "Be brief."} and sent[-1] == {"role": "user", "content": "hi"}
    assert "earlier" not in json.dumps(sent)  # the model's MESSAGE history is the server's to add
    assert client.streams[-1].closed
    client.interrupt_after = 1
    with pytest.raises(KeyboardInterrupt):
        session.ask("tell me more")
    assert client.streams[-1].closed
    assert len(session.messages) == 2  # the interrupted turn is not part of the conversation
    assert session.stdout.getvalue().endswith("Hello\n")  # type: ignore[attr-defined]


def test_clear_save_load_and_exit(session: Session, capsys: pytest.CaptureFixture[str]) -> None:
    client: FakeClient = session.client
    _run(session, "/set system Be brief.", capsys)
    _run(session, "/set parameter num_predict 5", capsys)
    session.ask("hi")
    assert "Created new model 'mine'" in _run(session, "/save mine", capsys)
    name, request = client.created[-1]
    assert name == "mine" and request["from_"] == MODEL and request["system"] == "Be brief."
    assert request["parameters"] == {"num_predict": 5}
    assert [m["content"] for m in request["messages"]] == ["earlier", "reply", "hi", "Hello there, friend."]
    assert "Usage" in _run(session, "/save", capsys)
    assert "Cleared session context" in _run(session, "/clear", capsys)
    assert session.messages == [] and session.system == "Be brief."
    session.ask("again")
    out = _run(session, "/load missing", capsys)
    assert "Error: model 'missing' not found" in out
    assert session.model == MODEL and len(session.messages) == 2  # a failed /load changes nothing
    out = _run(session, "/load other:1b", capsys)
    assert "Loading model 'other:1b'" in out
    assert session.model == "other:1b" and session.messages == []
    assert session.stdout.getvalue().endswith(">>> earlier\nreply\n\n")  # type: ignore[attr-defined]
    with pytest.raises(ExitRepl):
        run_command(session, "/bye")
    with pytest.raises(ExitRepl):
        run_command(session, "/exit")


def test_help_and_unknown_commands(session: Session, capsys: pytest.CaptureFixture[str]) -> None:
    for line in ("/?", "/help"):
        out = _run(session, line, capsys)
        assert "/set" in out and "/load <model>" in out and '"""' in out
    assert "Ctrl + c" in _run(session, "/? shortcuts", capsys)
    assert "/set system <string>" in _run(session, "/? set", capsys)
    assert "/show modelfile" in _run(session, "/help show", capsys)
    out = _run(session, "/frobnicate now", capsys)
    assert "Unknown command '/frobnicate'" in out
    for name, _ in repl_commands.COMMANDS:
        assert name in out
    assert repl_commands.completions("/s") == ["/set", "/show", "/save"]
    assert repl_commands.completions("/set parameter tem") == ["temperature"]


# ---- the real thing: a pseudo-terminal, a real server, the bundled model --------------------------


class Repl:
    """``corral run`` in a pseudo-terminal."""

    def __init__(self, url: str, home: Path, *args: str, columns: int = 100, env: dict[str, str] | None = None) -> None:
        import pexpect

        environment = {
            **os.environ,
            "CORRAL_HOST": url.removeprefix("http://"),
            "CORRAL_HOME": str(home),
            "CORRAL_MODELS": os.environ["CORRAL_HOME"] + "/models",  # the session's store: no re-import
            "TERM": "xterm",
            "PROMPT_TOOLKIT_NO_CPR": "1",  # pexpect answers no cursor-position queries
            **(env or {}),
        }
        if "CORRAL_NOHISTORY" not in (env or {}):
            environment.pop("CORRAL_NOHISTORY", None)
        self.child = pexpect.spawn(
            sys.executable,
            ["-m", "corral.cli.main", "run", *args],
            env=environment,
            encoding="utf-8",
            dimensions=(40, columns),
            timeout=120,
        )
        self.banner = "\n".join(render(self.prompt()))  # what it printed before the first prompt

    def prompt(self, timeout: float = 120) -> str:
        """Wait for the next prompt; return what was printed before it."""
        self.child.expect_exact(PASTE_ON, timeout=timeout)
        printed = self.child.before
        self.child.expect_exact(PLACEHOLDER, timeout=timeout)
        return printed

    def send(self, line: str) -> str:
        """Type ``line`` and Enter; return what was printed before the next prompt, as shown."""
        self.child.send(line + "\r")
        self.child.expect_exact(PASTE_OFF)
        return "\n".join(_spinner_free(render(self.prompt()))).strip("\n")

    def exit(self, key: str = "\x04") -> int:
        import pexpect

        self.child.send(key)
        self.child.expect(pexpect.EOF, timeout=30)
        self.child.close()
        return int(self.child.exitstatus)


def api_show(url: str, model: str) -> dict[str, Any]:
    r = httpx.post(f"{url}/api/show", json={"model": model}, timeout=60)
    r.raise_for_status()
    return r.json()


DETERMINISTIC = ["/set parameter temperature 0", "/set parameter seed 1"]


@pytest.mark.slow
class TestTerminal:
    @pytest.fixture(autouse=True)
    def _server(self, corral_server: str, tmp_path: Path) -> None:
        self.url, self.home = corral_server, tmp_path

    def repl(self, *args: str, **kw: Any) -> Repl:
        return Repl(self.url, self.home, *args, **kw)

    def test_prompts_blocks_and_ctrl_d(self) -> None:
        r = self.repl(MODEL)
        for line in DETERMINISTIC:
            r.send(line)
        assert r.send("/set parameter num_predict 24") == "Set parameter 'num_predict' to '24'"
        answer = r.send("What is the capital of France?")
        assert len(answer.split()) >= 3
        r.child.send('"""\r')
        r.child.expect_exact("...")  # the continuation prompt
        r.child.send("Name one colour.\r")
        r.child.send('Answer in one word."""\r')
        r.child.expect_exact(PASTE_OFF)
        assert r.prompt().strip()
        # A bracketed paste keeps its newlines in one message, sent with the Enter after it
        r.child.send("\x1b[200~Pasted line one.\nPasted line two.\x1b[201~")
        assert r.send("").strip()
        saved = self.home / "history"
        assert r.exit() == 0
        history = saved.read_text()
        assert "What is the capital of France?" in history and "Name one colour." in history
        assert "+Pasted line one.\n+Pasted line two.\n" in history  # one entry of two lines

    def test_a_long_chat_keeps_going_past_the_context(self) -> None:
        r = self.repl(MODEL)
        for line in [*DETERMINISTIC, "/set parameter num_predict 16", "/set parameter num_ctx 160"]:
            r.send(line)
        question = "Please tell me, in a few words, something true about the number {}."
        first = r.send(question.format(1))
        assert first and "dropped" not in first
        said = [r.send(question.format(n)) for n in range(2, 7)]  # ~40 tokens a turn: 160 hold about three
        notes = [s for s in said if "oldest exchange(s) were dropped" in s]
        assert notes and all("Error" not in s for s in said)
        assert r.exit() == 0

    def test_ctrl_c_at_the_prompt_hints_and_clears_the_line(self) -> None:
        r = self.repl(MODEL)
        r.child.send("\x03")
        assert "Use Ctrl + d or /bye to exit." in "\n".join(render(r.prompt()))
        r.child.send("half a question\x03")
        assert "Use Ctrl + d" not in r.prompt()
        assert r.exit("/bye\r") == 0

    def test_system_parameters_show_save_and_load(self) -> None:
        r = self.repl(MODEL)
        for line in DETERMINISTIC:
            r.send(line)
        r.send("/set parameter num_predict 12")
        assert "'stop' to '<|zz|>, <|yy|>'" in r.send("/set parameter stop <|zz|> <|yy|>")
        assert r.send("/set system You are a pirate. Answer briefly.") == "Set system message."
        assert r.send("/show system") == "You are a pirate. Answer briefly."
        params = r.send("/show parameters")
        assert "Model defined parameters:" in params
        assert re.search(r"temperature\s+0$", params, re.M) and re.search(r"num_predict\s+12$", params, re.M)
        assert re.search(r"stop\s+<\|zz\|>$", params, re.M)
        answer = r.send("Where is the treasure?")
        assert answer
        assert "Model" in r.send("/show info") and "llama" in r.send("/show info")
        assert re.search(r'^SYSTEM (""")?You are a pirate\.', r.send("/show modelfile"), re.M)
        assert r.send("/save repl-pirate") == "Created new model 'repl-pirate'"
        try:
            shown = api_show(self.url, "repl-pirate")
            assert shown["system"] == "You are a pirate. Answer briefly."
            assert {"role": "user", "content": "Where is the treasure?"} in shown["messages"]
            assert shown["messages"][-1]["role"] == "assistant" and shown["messages"][-1]["content"].split()
            assert re.search(r"num_predict\s+12", shown["parameters"]) and re.search(
                r"temperature\s+0", shown["parameters"]
            )
            assert re.search(r'^MESSAGE user (""")?Where is the treasure\?', shown["modelfile"], re.M)

            # /load: a missing model changes nothing; the saved one shows its history, with a new conversation
            assert "not found" in r.send("/load no-such-model:1b")
            loaded = r.send("/load repl-pirate")
            assert "Loading model 'repl-pirate'" in loaded and ">>> Where is the treasure?" in loaded
            assert r.send("/show system") == "You are a pirate. Answer briefly."
            modelfile = r.send("/show modelfile")
            assert modelfile.count("MESSAGE user") == 1  # the conversation started over
            assert r.send("/clear") == "Cleared session context"
            assert r.exit() == 0

            # Starting on the saved model prints its MESSAGE history first
            again = Repl(self.url, self.home, "repl-pirate")
            assert ">>> Where is the treasure?" in again.banner
            assert again.exit() == 0
        finally:
            httpx.request("DELETE", f"{self.url}/api/delete", json={"model": "repl-pirate"}, timeout=60)

    def test_unknown_command_and_help(self) -> None:
        r = self.repl(MODEL)
        out = r.send("/nope")
        assert "Unknown command '/nope'" in out
        for name in ("/set", "/show", "/load <model>", "/save <model>", "/clear", "/bye", "/?, /help"):
            assert name in out
        assert "Ctrl + d" in r.send("/? shortcuts")
        assert r.exit() == 0

    def test_verbose_wordwrap_format_and_nohistory(self) -> None:
        r = self.repl("--verbose", MODEL, columns=40, env={"CORRAL_NOHISTORY": "1"})
        for line in DETERMINISTIC:
            r.send(line)
        r.send("/set parameter num_predict 60")
        answer = r.send("Describe the sea in three long sentences.")
        assert "eval count:" in answer and "eval rate:" in answer
        text = answer.split("total duration:")[0].strip().splitlines()
        assert len(text) > 1 and max(len(line) for line in text) <= 39  # wrapped to the 40 columns
        r.send("/set quiet")
        r.send("/set nowordwrap")
        r.send("/clear")
        unwrapped = r.send("Describe the sea in three long sentences.")
        assert "eval count:" not in unwrapped
        assert max(len(line) for line in unwrapped.splitlines()) > 40  # one long line: the terminal wraps it
        r.send("/set parameter num_predict 30")
        r.send("/set format json")
        assert r.send("Give a JSON object with a name field.").lstrip().startswith("{")
        assert r.exit() == 0
        assert not (self.home / "history").exists()

    def test_keepalive_flag_reaches_the_server(self) -> None:
        r = self.repl("--keepalive", "17m", MODEL)
        ps = httpx.get(f"{self.url}/api/ps", timeout=30).json()["models"]
        expires = next(m["expires_at"] for m in ps if m["name"] == MODEL)
        from datetime import datetime

        left = (datetime.fromisoformat(expires.replace("Z", "+00:00")) - datetime.now(UTC)).total_seconds()
        assert 15 * 60 < left <= 17 * 60
        assert r.exit() == 0

    def test_pipes_get_the_answer_only(self) -> None:
        import pexpect

        env = {**os.environ, "CORRAL_HOST": self.url.removeprefix("http://"), "TERM": "xterm"}
        cmd = f"{sys.executable} -m corral.cli.main run {MODEL} 'Say hello.' | cat"
        child = pexpect.spawn("bash", ["-c", cmd], env=env, encoding="utf-8", timeout=120)
        child.expect(pexpect.EOF)
        out = child.before
        child.close()
        assert child.exitstatus == 0 and out.strip()
        assert ">>>" not in out and "\x1b[" not in out
        # A terminal for input but a pipe for output: no REPL either
        child = pexpect.spawn(
            "bash",
            ["-c", f"{sys.executable} -m corral.cli.main run {MODEL} | cat"],
            env=env,
            encoding="utf-8",
            timeout=120,
        )
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0 and ">>>" not in child.before


@pytest.fixture(scope="module")
def one_slot_server(_corral_home: Path) -> Iterator[str]:
    """A server with a single slot: if an interrupted answer kept generating, the next would wait."""
    from serverproc import running_server

    with running_server(_corral_home, CORRAL_NUM_PARALLEL="1") as url:
        yield url


def _metric(url: str, name: str, **labels: str) -> float:
    """The sum of the server's /metrics samples called ``name`` that carry ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def _wait_until(condition: Any, what: str, guard: float = 120) -> None:
    """Wait for ``condition()``; ``guard`` only stops a hung test, it measures nothing."""
    deadline = time.monotonic() + guard
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)


@pytest.mark.slow
def test_ctrl_c_stops_the_answer_and_frees_the_slot(one_slot_server: str, tmp_path: Path) -> None:
    url = one_slot_server
    r = Repl(url, tmp_path, MODEL)
    for line in DETERMINISTIC:
        r.send(line)
    r.send("/set parameter num_predict 2000")
    cancelled = _metric(url, "corral:request_success_total", finished_reason="cancelled")
    r.child.send("Write a very long story about a dragon.\r")
    r.child.expect_exact(PASTE_OFF)
    r.child.expect(r"(\w+\W+){8}")  # the answer is streaming
    assert _metric(url, "corral:num_requests_running") == 1  # the story holds the one slot
    r.child.send("\x03")
    r.prompt()  # Ctrl-C gives the prompt back
    # The REPL closed its stream mid-answer, so the server counts the story as cancelled, and the one slot
    # is free for the next answer (that a worker stops a cancelled sequence at once is shown by token
    # counts in tests/runtime/test_scheduler.py).
    _wait_until(
        lambda: _metric(url, "corral:request_success_total", finished_reason="cancelled") == cancelled + 1
        and _metric(url, "corral:num_requests_running") == 0,
        "the interrupted answer counted as cancelled and its slot free",
    )
    r.send("/set parameter num_predict 8")
    assert r.send("Say hi.").split()
    modelfile = r.send("/show modelfile")
    assert (
        re.search(r'^MESSAGE user (""")?Say hi\.', modelfile, re.M) and "dragon" not in modelfile
    )  # the interrupted turn is left out
    assert r.exit() == 0


def test_thinking_is_framed_apart_from_the_answer(session: Session, capsys: pytest.CaptureFixture[str]) -> None:
    client: FakeClient = session.client
    client.thoughts = ("The user", " greets me.")
    assert "Set 'think' mode." in _run(session, "/set think", capsys)
    assert session.ask("hi") == "Hello there, friend."
    out = session.stdout.getvalue()  # type: ignore[attr-defined]
    assert out.endswith("Thinking...\nThe user greets me.\n...done thinking.\n\nHello there, friend.\n")
    assert client.chats[-1]["think"] is True
    assert session.messages[-1] == {"role": "assistant", "content": "Hello there, friend."}  # the trace stays out
    session.hide_thinking = True
    session.ask("again")
    assert session.stdout.getvalue().endswith("friend.\nHello there, friend.\n")  # type: ignore[attr-defined]
    assert "Set 'nothink' mode." in _run(session, "/set nothink", capsys)
    session.ask("and again")
    assert client.chats[-1]["think"] is False


def test_a_conversation_that_outgrows_the_context_drops_its_oldest_exchanges(
    session: Session, capsys: pytest.CaptureFixture[str]
) -> None:
    client: FakeClient = session.client
    session.system = "be brief"
    for i in range(3):
        session.ask(f"turn {i}")
    client.max_messages = 4  # the system prompt and three more
    assert session.ask("turn 3") == "Hello there, friend."
    sent = client.chats[-1]["messages"]
    assert [m["content"] for m in sent] == ["be brief", "turn 2", "Hello there, friend.", "turn 3"]
    assert "its 2 oldest exchange(s) were dropped" in capsys.readouterr().err
    assert [m["content"] for m in session.messages if m["role"] == "user"] == ["turn 2", "turn 3"]
    client.max_messages = 1  # not even the new turn fits: the error is the user's to see, the history stays
    from corral.client import ResponseError

    with pytest.raises(ResponseError, match="more than the context"):
        session.ask("a very long question")
    assert [m["content"] for m in session.messages if m["role"] == "user"] == ["turn 2", "turn 3"]
