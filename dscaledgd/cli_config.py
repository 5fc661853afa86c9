"""``dscaledgd --config job.yaml``: a batch job is a file, not a long command line.

The YAML file is a mapping: ``command`` (the subcommand), the subcommand's
positional arguments by name (``obs``, ``data``, ``result``, ...) and its options
by their long names (``rank: 40``, ``reg: 0.1``, ``center: biases``,
``scheduler-file: /shared/sched.json``; ``_`` and ``-`` are the same). ``true``
turns a flag on. Options given on the command line after ``--config job.yaml`` win
over the file's::

    dscaledgd --config job.yaml --max-iter 50
"""

from __future__ import annotations

import os

__all__ = ["expand_config"]


def _positionals(parser, command: str) -> list[str]:
    for action in parser._actions:  # the subcommands' action
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict) and command in choices:
            sub = choices[command]
            return [a.dest for a in sub._actions if not a.option_strings]
    raise ValueError(f"--config: unknown command {command!r}.")


def expand_config(parser, argv: list[str]) -> list[str]:
    """``argv`` with ``--config PATH`` replaced by the command line the file describes."""
    if "--config" not in argv:
        return argv
    i = argv.index("--config")
    if i + 1 >= len(argv):
        parser.error("argument --config: expected a YAML file")
    path, rest = argv[i + 1], argv[:i] + argv[i + 2 :]
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such --config file: {path!r}.")
    import yaml

    with open(path) as fh:
        try:
            cfg = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise ValueError(f"--config {path!r} is not valid YAML ({exc}).") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"--config {path!r} must be a mapping of option names to values.")
    cfg = {str(k).replace("_", "-"): v for k, v in cfg.items()}
    command = cfg.pop("command", None)
    if rest and not rest[0].startswith("-"):  # a command on the line too
        if command is not None and command != rest[0]:
            raise ValueError(
                f"--config {path!r} is for {command!r}, but the command line says {rest[0]!r}."
            )
        command, rest = rest[0], rest[1:]
    if command is None:
        raise ValueError(f"--config {path!r} names no command (add e.g. 'command: complete').")
    tokens = [str(command)]
    for name in _positionals(parser, str(command)):
        key = name.replace("_", "-")
        if key in cfg:
            tokens.append(str(cfg.pop(key)))
    for key, value in cfg.items():
        flag = f"--{key}"
        if value is True:
            tokens.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list | tuple):
            tokens += [flag, ",".join(str(v) for v in value)]
        else:
            tokens += [flag, str(value)]
    return tokens + rest
