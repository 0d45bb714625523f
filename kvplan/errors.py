"""Errors meant for people: one sentence naming the file, field or flag; exit 2."""

from __future__ import annotations


class KvplanError(Exception):
    """An expected failure: the CLI prints `message` alone and exits with `exit_code`."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code


class InputError(KvplanError):
    """Bad input: a flag, file or field the user can fix (exit 2)."""


def require_at_least(flag: str, value: int, minimum: int = 1, unit: str = "") -> None:
    """One flag per message: '--batch must be at least 1 sequence, got 0'."""
    if value < minimum:
        raise InputError(f"{flag} must be at least {minimum}{' ' + unit if unit else ''}, got {value}")
