"""The `pthnet` subcommands that need more than a line of glue: flags, messages, files written."""
