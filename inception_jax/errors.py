"""Errors a user can cause, and the exit statuses of the command line. The
command line prints a `UserError`'s message alone — no stack trace — and
exits with the error's `exit_code` (`ExitCode.USER_ERROR` unless a subclass
says otherwise). docs/ARCHITECTURE.md lists the statuses (a test holds the
list to this enum)."""

import enum


class ExitCode(enum.IntEnum):
  """Every exit status of `python -m inception_jax` (`cli.main`'s return)."""
  OK = 0
  # An unexpected error (a traceback), a sweep run that failed, a `sync`
  # that wandb could not finish.
  FAILED = 1
  USER_ERROR = 2       # something the user asked for is wrong: one `error:` line
  NON_FINITE = 3       # the loss or the gradient stopped being finite
  # Stopped by a signal (SIGTERM, SIGINT, SLURM's SIGUSR2) after saving, or a
  # sweep with runs left to train: rerun the same command to resume.
  INTERRUPTED = 4
  STALE = 5            # a sweep holds runs trained under another config
  DISK_FULL = 6        # no space left: free some and rerun the same command
  # A search trial (`train --search-trial`) that the study's pruner stopped
  # after an evaluation: saved, result.json says `pruned`; not a failure.
  PRUNED = 7


class UserError(Exception):
  """Something the user asked for is wrong; the message says what to do."""
  exit_code = ExitCode.USER_ERROR


class ConfigError(UserError, ValueError):
  """An unknown config key, a wrong type, or an impossible value."""
