"""Every `detente …` command that the code names must exist in the real CLI.

Error messages and help texts name the next command to run (STYLE.md habit 7:
"no identity yet: run `detente party init`"). A message that names a command
which does not exist sends the user nowhere, so this test collects every
backtick-quoted ``detente WORD [WORD…]`` reference in the product sources
(string literals, f-strings with their implicit concatenations joined, and
comments) and resolves it in the click command tree of ``detente.cli:app``.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer.main

from detente.cli import app

ROOT = Path(__file__).resolve().parent.parent
SOURCE_FOLDERS = [
    "protocols",
    "libos",
    "enclave-worker",
    "coordinator",
    "party-client",
    "experiments",
    "detente",
]
# Generated gRPC code names no commands.
SKIPPED_PARTS = {"tests", "wire", "__pycache__", "build"}
REFERENCE = re.compile(r"`detente(?:\s+([^`]*))?`")
# A command word; anything else (JOB, --home, a=b, file.csv, {job_id}, …) is an argument.
COMMAND_WORD = re.compile(r"^[a-z][a-z0-9_-]*$")
PLACEHOLDER = "{…}"  # stands in for an f-string's formatted value


@dataclass(frozen=True)
class Reference:
    words: tuple[str, ...]
    text: str
    where: str  # path:line


def product_sources() -> list[Path]:
    files = []
    for folder in SOURCE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if SKIPPED_PARTS.isdisjoint(path.relative_to(ROOT).parts):
                files.append(path)
    return files


def _string_of(node: ast.AST) -> str | None:
    """The text of a string literal; an f-string with each formatted value as a placeholder."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else PLACEHOLDER
            for v in node.values
        )
    return None


def texts_of(path: Path) -> list[tuple[str, int]]:
    """Every string literal (implicit concatenations joined by the parser) and comment."""
    source = path.read_text(encoding="utf-8")
    found: list[tuple[str, int]] = []
    tree = ast.parse(source, str(path))
    inner: set[int] = set()  # the Constant parts of f-strings, seen through their JoinedStr
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            inner.update(id(v) for v in node.values)
    for node in ast.walk(tree):
        if id(node) in inner:
            continue
        text = _string_of(node)
        if text is not None:
            found.append((text, getattr(node, "lineno", 0)))
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found.append((token.string, token.start[0]))
    return found


def command_words(reference: str) -> tuple[str, ...]:
    """The leading command words of what follows `detente `, up to the first argument."""
    words = []
    for token in reference.split():
        if not COMMAND_WORD.match(token):
            break
        words.append(token)
    return tuple(words)


def references() -> list[Reference]:
    found = []
    for path in product_sources():
        for text, line in texts_of(path):
            for match in REFERENCE.finditer(text):
                found.append(
                    Reference(
                        command_words(match.group(1) or ""),
                        match.group(0),
                        f"{path.relative_to(ROOT)}:{line}",
                    )
                )
    return found


def resolves(root: Any, words: tuple[str, ...]) -> bool:
    """Whether ``words`` name a group or command; words after a leaf command are arguments.

    ``root`` is a click command (typer vendors click, so groups are told by their
    ``commands`` mapping rather than by class).
    """
    node = root
    for word in words:
        subcommands = getattr(node, "commands", None)
        if subcommands is None:
            return True  # a leaf command: the rest are its arguments
        if word not in subcommands:
            return False
        node = subcommands[word]
    return True


def test_references_are_found() -> None:
    """The collector itself works: the code names commands, in several components."""
    found = references()
    assert len(found) > 20
    named = {r.words[:2] for r in found}
    assert ("party", "init") in named
    assert ("coordinator", "enroll") in named


def test_command_words_stop_at_the_first_argument() -> None:
    assert command_words("party init --name alice") == ("party", "init")
    assert command_words("coordinator cancel JOB --home HOME") == ("coordinator", "cancel")
    assert command_words("party upload data.csv") == ("party", "upload")
    assert command_words("party retry {…}") == ("party", "retry")
    assert command_words("party init key=value") == ("party", "init")
    assert command_words("") == ()


def test_every_named_command_exists() -> None:
    root = typer.main.get_command(app)
    unknown = sorted(
        {(" ".join(r.words), r.where, r.text) for r in references() if not resolves(root, r.words)}
    )
    assert not unknown, "the code names commands that `detente` does not have:\n" + "\n".join(
        f"  detente {words}  ({where}: {text})" for words, where, text in unknown
    )
