"""Errors a user sees: one line ``error: WHERE: WHAT (hint)`` and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a file, a parameter, a job id, an unreachable database."""

    exit_code = 2

    def __init__(self, what: str, where: str | None = None, hint: str | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.where = where
        self.hint = hint

    def line(self) -> str:
        where = f"{self.where}: " if self.where else ""
        hint = f" (hint: {self.hint})" if self.hint else ""
        return f"error: {where}{self.what}{hint}"


class Fenced(Exception):
    """A write from an attempt that is no longer the job's current one was refused."""

    def __init__(self, job_id: int, attempt: int) -> None:
        super().__init__(f"job {job_id} attempt {attempt} has been superseded")
        self.job_id = job_id
        self.attempt = attempt


class PermanentError(Exception):
    """Raised by a job kind when retrying cannot help (missing input file, bad parameter): the job
    fails at once instead of using up its attempts."""
