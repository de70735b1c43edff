"""`autoselmatch bench reproduce` as a script (global options as settings: --set device=cuda --set seed=1)."""
import sys

from autoselmatch.cli import cli

cli(["bench", "reproduce", *sys.argv[1:]], prog_name="bench/reproduce.py")
