"""ekt: explicit knowledge transfer of code generation from a teacher LM to a small student."""

__version__ = "0.1.0"
