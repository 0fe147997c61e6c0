"""One exception family: the CLI turns these into a one-line message and an exit code."""


class CcnbenchError(Exception):
    """An error a user can act on; the CLI prints its message and exits 1."""

    exit_code = 1


class UsageError(CcnbenchError):
    """The request itself cannot work (bad spec, unknown option value); the CLI exits 2."""

    exit_code = 2


class SpecError(UsageError):
    """A ModelSpec field that cannot work. The message names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"invalid spec: {field}: {message}")
        self.field = field


class MissingDependency(CcnbenchError):
    """An optional dependency is absent; the message is the install line."""


class ResultsError(CcnbenchError):
    """A results file is corrupt, foreign or of an unsupported schema version."""


def one_line(exc: BaseException | str, limit: int = 400) -> str:
    """An exception (or a runtime's message) as one line a table or a log can hold."""
    return " ".join(str(exc).split())[:limit]
