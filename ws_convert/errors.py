"""The project's exceptions. Each carries a message for a person; the CLI
turns them into one line and an exit code."""

from __future__ import annotations


def printable(text: str) -> str:
    """`text` with every character that is not printable (newlines, NUL,
    terminal escapes, lone surrogates) spelled as a Python escape, so that a
    message naming a hostile file or tensor stays one harmless line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class WsConvertError(Exception):
    """Base of every error ws-convert raises on purpose."""


class CheckpointError(WsConvertError):
    """A checkpoint file is missing, malformed or inconsistent."""

    def __init__(self, file: object, reason: str, tensor: str | None = None) -> None:
        self.file, self.tensor, self.reason = str(file), tensor, reason
        where = f"{file}: tensor '{tensor}'" if tensor is not None else f"{file}"
        super().__init__(printable(f"{where}: {reason}"))


class OutputError(WsConvertError):
    """The output cannot be written where or how it was asked."""


class PlanError(WsConvertError):
    """The requested growth cannot be planned for this checkpoint."""
