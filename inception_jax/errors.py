"""Errors a user can cause. The command line prints their message alone —
no stack trace — and exits with status 2."""


class UserError(Exception):
  """Something the user asked for is wrong; the message says what to do."""


class ConfigError(UserError, ValueError):
  """An unknown config key, a wrong type, or an impossible value."""
