"""The `memq` command group: the options that say where the queue is are taken after a command's
name too (`memq status --root R` as `memq --root R status`), by every command, groups included."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

from typer.core import TyperGroup

# The group's own options that name a field of memq.options.RootOptions
ROOT_FIELDS = ("root", "db", "db_mode")


def _override(field: str) -> Callable[[Any, Any, Any], Any]:
    """A callback that puts an option given after the command into the RootOptions the group's
    callback made (it ran first); so the later of the two places wins."""

    def callback(ctx: Any, _param: Any, value: Any) -> Any:
        if value is not None:
            root = ctx.find_root()
            root.obj = dataclasses.replace(root.obj, **{field: value})
        return value

    return callback


def _lend(options: list[Any], command: Any) -> None:
    """Give ``command`` (and each command of a group) copies of the options it does not define
    itself (`memq demo --root` keeps its own)."""
    taken = {opt for param in command.params for opt in param.opts}
    for option in options:
        if not taken & set(option.opts):
            lent = copy.copy(option)
            lent.expose_value = False
            lent.callback = _override(option.name)
            command.params.append(lent)
    for sub in getattr(command, "commands", {}).values():
        _lend(options, sub)


class MemqGroup(TyperGroup):
    """The top-level group; its commands take --root, --db and --db-mode as well."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _lend([param for param in self.params if param.name in ROOT_FIELDS], command)
        return command
