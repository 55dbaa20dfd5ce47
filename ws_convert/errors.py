"""The project's exceptions. Each carries a message for a person; the CLI
turns them into one line and an exit code."""

from __future__ import annotations


class WsConvertError(Exception):
    """Base of every error ws-convert raises on purpose."""


class CheckpointError(WsConvertError):
    """A checkpoint file is missing, malformed or inconsistent."""

    def __init__(self, file: object, reason: str, tensor: str | None = None) -> None:
        self.file, self.tensor, self.reason = str(file), tensor, reason
        where = f"{file}: tensor '{tensor}'" if tensor is not None else f"{file}"
        super().__init__(f"{where}: {reason}")


class OutputError(WsConvertError):
    """The output cannot be written where or how it was asked."""


class PlanError(WsConvertError):
    """The requested growth cannot be planned for this checkpoint."""
