"""Errors a user can cause. The command line prints their message alone —
no stack trace — and exits with the error's `exit_code` (2 unless a subclass
says otherwise)."""


class UserError(Exception):
  """Something the user asked for is wrong; the message says what to do."""
  exit_code = 2


class ConfigError(UserError, ValueError):
  """An unknown config key, a wrong type, or an impossible value."""
