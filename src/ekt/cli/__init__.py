"""The ``ekt`` command: one subcommand per stage, plus ``run`` and ``demo`` for whole
experiments. ``options`` declares each command's options, ``flags`` turns them into parsers
and reads the command line, ``commands`` runs them, ``main`` dispatches.

Every subcommand's options are a dataclass (``GenerateOptions``, ...) whose fields nest the
settings' own dataclasses (``TeacherSampling``, ``SandboxConfig``, ``TrainConfig``...);
jsonargparse turns the fields into flags, their attribute docstrings (or ``# comments``)
into help text and ``Literal`` types into checked choices. A new field of any of those
classes is a new flag with no code here (see ``ekt.pipeline.config`` for how to add one).

A setting's canonical flag is its dotted key (``--sampling.temperature``,
``--sandbox.timeout``); the short spellings of earlier ekt versions are derived from the
keys, not listed: the last part of the key when no other key ends the same way
(``--temperature``, ``--timeout``), a ``name`` field by its block (``--backend vllm``), dots
as underscores (``--kd-alpha``, ``--ray-replicas``), dashes as underscores
(``--learning-rate``), ``--no-X`` for a false boolean, comma- or space-separated lists
(``--k 1,10``) and ``--ray [ADDRESS]`` for an optional block. ``ekt run CONFIG`` takes any
run-config key as an override (``--train.learning_rate 2e-5 --eval.n 8``), recorded in the
run folder's ``config.yaml``.

Errors a user can fix (bad input, bad options) print one line naming the flag as typed and
exit 2; add ``--debug`` for the traceback.
"""

from ekt.cli.flags import (
    HELP_COMMON,
    UsageError,
    aliases,
    command_parser,
    normalize,
    parse,
    suggest_flags,
)
from ekt.cli.main import main
from ekt.cli.options import COMMAND_OPTIONS, options_class, required_keys
from ekt.pipeline.flags import leaf_keys

__all__ = [
    "COMMAND_OPTIONS",
    "HELP_COMMON",
    "UsageError",
    "aliases",
    "command_parser",
    "leaf_keys",
    "main",
    "normalize",
    "options_class",
    "parse",
    "required_keys",
    "suggest_flags",
]
