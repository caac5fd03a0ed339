"""``prh``'s argument parser: argparse's, with errors that say what to type instead.

argparse answers a mistyped command line with messages that name no fix: ``prh --bogus`` says
"the following arguments are required: command" (the option it did not know is not named),
``prh rn`` lists the commands without the one meant, ``prh run --confg x`` prints ``prh``'s usage
and "unrecognized arguments" without naming ``--config``, and ``prh --store URL sql ...`` calls
the URL an invalid command. :class:`CommandParser` keeps argparse's usage line and exit status 2,
and says instead which command or option was probably meant (``did you mean --config?``), where an
option goes (after its command; ``--version`` before it), and that an SQL query is one argument.
Its ``--help`` (``prh --help``, ``prh run --help``) ends as ``--version`` does when stdout cannot be
written (``flows.cli_console.print_or_exit``). Standard library only.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import Any, Sequence

#: How alike a mistyped name and a known one must be (``difflib``'s ratio) to be suggested: ``rn``
#: for ``run`` (0.8), ``--confg`` for ``--config`` (0.93), not ``--x`` for ``--n`` (0.67).
SUGGEST_CUTOFF = 0.75


def _command_action(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:  # type: ignore[type-arg]
    """The action of ``parser``'s commands (``run``, ``sql``..., or ``catalog``'s ``export``), if it has one."""
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _options(parser: argparse.ArgumentParser) -> list[str]:
    """The option strings ``parser`` takes (``--store``, ``-h``...)."""
    return [flag for action in parser._actions for flag in action.option_strings]


def _closest(word: str, known: Sequence[str]) -> str | None:
    """The name of ``known`` that ``word`` was most probably meant to be (case aside), or None."""
    by_lower = {name.lower(): name for name in known}
    found = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=SUGGEST_CUTOFF)
    return by_lower[found[0]] if found else None


def _listed(names: Sequence[str], last: str = "and") -> str:
    """``run, sql, report, catalog, gc and verify`` (``last``: the word before the last name)."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}"


def _taken_by(prog: str, commands: list[str]) -> str:
    """``prh report``, or ``the commands run, sql and gc`` (of ``prog``)."""
    return f"{prog} {commands[0]}" if len(commands) == 1 else f"the commands {_listed(commands)}"


def _commands_taking(parser: argparse.ArgumentParser, option: str, path: str = "") -> list[str]:
    """The commands under ``parser`` (``sql``, ``catalog export``) that take ``option``."""
    action = _command_action(parser)
    if action is None:
        return []
    found = []
    for name, sub in action.choices.items():
        command = f"{path}{name}"
        if option in _options(sub):
            found.append(command)
        found += _commands_taking(sub, option, f"{command} ")
    return found


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors name the fix (module docstring). Build ``prh``'s commands
    with ``add_subparsers(dest=..., required=False)``: :meth:`parse_args` asks for a missing command
    itself, naming what it did not understand in its place."""

    _argv: list[str] | None = None

    def print_help(self, file: Any = None) -> None:
        """``-h``/``--help`` into stdout, written and flushed here (``flows.cli_console.print_or_exit``):
        where that fails, exit 141 (the reader went away) or 2 with one line (a full disk), as
        ``--version`` does. argparse's printing swallows the error of its write (``prh --help | head
        -c0`` exited 0 having printed nothing, or 120 with Python's "Exception ignored"). Into another
        ``file``, argparse's own printing."""
        if file is not None and file is not sys.stdout:
            super().print_help(file)
            return
        from flows.cli_console import print_or_exit

        print_or_exit(self, self.format_help())

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        parsers = [self]
        for parser in parsers:  # each command's parser reads the whole line: prh catalog --store URL export
            parser._argv = argv
            action = _command_action(parser)
            parsers += list(action.choices.values()) if action is not None else []
        parsed, extras = self.parse_known_args(argv, namespace)
        parser = self
        while (action := _command_action(parser)) is not None:
            chosen = getattr(parsed, action.dest, None)
            if chosen is None:
                parser.error(self._no_command(parser, action, extras))
            parser = action.choices[chosen]
        if extras:
            parser.error(self._unrecognized(parser, extras))
        return parsed

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if isinstance(action, argparse._SubParsersAction) and value not in action.choices:
            raise argparse.ArgumentError(None, self._unknown_command(action, str(value)))
        super()._check_value(action, value)

    def _unknown_command(self, action: argparse._SubParsersAction, value: str) -> str:  # type: ignore[type-arg]
        """``prh rn``: the command meant; ``prh --store URL sql``: the option goes after the command."""
        commands = list(action.choices)
        argv = self._argv or []
        before = argv[argv.index(value) - 1] if value in argv[1:] else ""
        if before.startswith("-") and "=" not in before and before not in _options(self):
            after = argv[argv.index(value) + 1] if argv.index(value) + 1 < len(argv) else ""
            takers = _commands_taking(self, before)
            if not takers:  # prh --bogus x
                return self._unknown_option(self, action, before)
            command = after if after in commands else takers[0]
            return (f"{before} {value}: {before} is an option of {_taken_by(self.prog, takers)}, not of {self.prog}: write "
                    f"it after the command ({self.prog} {command} {before} {value} ...)")
        meant = _closest(value, commands)
        guess = f" (did you mean {meant}?)" if meant else ""
        return f"{self.prog} has no command {value!r}{guess}; its commands: {_listed(commands)} ({self.prog} --help says what each does)"

    def _no_command(self, parser: argparse.ArgumentParser, action: argparse._SubParsersAction,  # type: ignore[type-arg]
                    extras: list[str]) -> str:
        """``prh``, ``prh --bogus``, ``prh --dry-run``: what was not understood, and the commands."""
        option = next((word for word in extras if word.startswith("-")), None)
        if option is None:
            return f"give a command: {_listed(list(action.choices), 'or')} ({parser.prog} --help says what each does)"
        name = option.split("=", 1)[0]
        takers = _commands_taking(parser, name)
        if takers:
            return (f"{name} is an option of {_taken_by(parser.prog, takers)}: write it after the command "
                    f"({parser.prog} {takers[0]} {option} ...)")
        return self._unknown_option(parser, action, name)

    @staticmethod
    def _unknown_option(parser: argparse.ArgumentParser, action: argparse._SubParsersAction,  # type: ignore[type-arg]
                        name: str) -> str:
        """``prh --bogus``: an option no command takes, given before the command."""
        own = [o for o in _options(parser) if o.startswith("--")]
        meant = _closest(name, own)
        guess = f" (did you mean {meant}?)" if meant else ""
        return (f"unrecognized option {name}{guess}; before its command {parser.prog} takes only {_listed(own, 'or')}: "
                f"give a command: {_listed(list(action.choices), 'or')} ({parser.prog} COMMAND --help lists its options)")

    def _unrecognized(self, parser: argparse.ArgumentParser, extras: list[str]) -> str:
        """``prh run --confg x``: argparse's "unrecognized arguments", said by the command's parser
        (its usage line, not ``prh``'s), with what each unknown option probably is."""
        notes = []
        for word in extras:
            if not word.startswith("-") or word == "-":
                continue
            name = word.split("=", 1)[0]
            if name in _options(parser):  # given before the command: the top-level parser left it
                notes.append(f"{name} goes after the command: {parser.prog} {word} ...")
            elif name in _options(self):
                notes.append(f"{name} is an option of {self.prog} itself: {self.prog} {name}")
            elif meant := _closest(name, [o for o in _options(parser) if o.startswith("--")]):
                notes.append(f"{name}: did you mean {meant}?")
            elif takers := _commands_taking(self, name):
                notes.append(f"{name} is an option of {_taken_by(self.prog, takers)}, not of {parser.prog}")
        # words that are no option's value: `prh sql select 1` leaves `1` (not `prh sql Q --fromat csv`'s `csv`)
        words = [word for at, word in enumerate(extras) if not word.startswith("-")
                 and not (at and extras[at - 1].startswith("-") and "=" not in extras[at - 1])]
        if words and any(a.dest == "query" for a in parser._actions):  # prh sql select 1 from runs
            notes.append(f'the query is one argument: put it in quotes ({parser.prog} "select ...")')
        return f"unrecognized arguments: {' '.join(extras)}" + (f" ({'; '.join(notes)})" if notes else "")
