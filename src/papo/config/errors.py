"""The error every entry point reports for an invalid config: one line per problem, no traceback."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """Invalid config values; the message names each key and the allowed values or range.

    ``problems`` holds one line per problem. With one problem the message is that line; with several it is a
    header and one indented line per problem (:func:`papo.config.validate_config` reports every problem at
    once).
    """

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            lines = "\n".join(f"  {p}" for p in self.problems)
            message = f"{len(self.problems)} config problems:\n{lines}"
        super().__init__(message)

    def report(self) -> str:
        """What an entry point prints (src/train.py, src/eval.py): a header and one line per problem."""
        if len(self.problems) == 1:
            return f"Invalid config: {self.problems[0]}"
        lines = "\n".join(f"  {p}" for p in self.problems)
        return f"Invalid config ({len(self.problems)} problems):\n{lines}"
