"""The block's exceptions: one base, one subclass per family, each formatting its own message.

Someone else holding a lock is an observation, not an error: it never raises. Exit codes for
each family are mapped in one place, :data:`EXIT_CODES`, and used by the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "EXIT_CODES",
    "EX_CONFIG",
    "EX_SOFTWARE",
    "EX_UNAVAILABLE",
    "ApiError",
    "ConfigError",
    "ConfigProblem",
    "LockError",
    "UpdateLockError",
    "WatchError",
    "exit_code_for",
]

# sysexits.h, so the numbers mean the same as everywhere else.
EX_CONFIG = 78
EX_SOFTWARE = 70
EX_UNAVAILABLE = 69


class UpdateLockError(Exception):
    """Base of every error the block raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One invalid variable: its name, its value and the form it should have."""

    name: str
    value: str
    expected: str

    def __str__(self) -> str:
        return f"{self.name}={self.value!r}: expected {self.expected}"


class ConfigError(UpdateLockError):
    """Every problem found in the configuration at once."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


class LockError(UpdateLockError):
    """The lock file could not be handled for a reason other than someone else holding it."""

    def __init__(self, path: str, action: str, errno_name: str, detail: str) -> None:
        self.path = path
        self.action = action
        self.errno_name = errno_name
        self.detail = detail
        super().__init__(f"cannot {action} {path}: {errno_name} ({detail})")


class WatchError(UpdateLockError):
    """A directory could not be watched (inotify)."""

    def __init__(self, path: str, errno_name: str, detail: str) -> None:
        self.path = path
        self.errno_name = errno_name
        self.detail = detail
        super().__init__(f"cannot watch {path}: {errno_name} ({detail})")


class ApiError(UpdateLockError):
    """A Supervisor API call failed. The message never contains the API key."""

    def __init__(self, method: str, path: str, status: int | None, message: str) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.message = message
        shown = f"HTTP {status}" if status is not None else "no response"
        super().__init__(f"{method} {path}: {shown}: {message}")


EXIT_CODES: dict[type[UpdateLockError], int] = {
    ConfigError: EX_CONFIG,
    LockError: EX_SOFTWARE,
    WatchError: EX_SOFTWARE,
    ApiError: EX_UNAVAILABLE,
}


def exit_code_for(error: UpdateLockError) -> int:
    """The process exit code for an error family (the most specific class wins)."""
    for cls in type(error).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return EX_SOFTWARE
