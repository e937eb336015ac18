"""User errors of the command line. `sealctl.main.main` is the one place that turns them (and
the errors of the libraries it calls) into one line on stderr and a nonzero exit status."""
from __future__ import annotations


class CliError(Exception):
    """Something the user can fix; the message says what, in one line."""

    exit_code = 1


class BadArgument(CliError):
    """A command line argparse refused (exit 2, as argparse's own)."""

    exit_code = 2


class NoCluster(CliError):
    """No cluster in the data directory (wrong SEALSTORE_DATA_DIR, or never started)."""


class ClusterDown(CliError):
    """The cluster is described but a service it needs does not answer."""


class MissingCredentials(CliError):
    """No root S3 credentials in the environment nor in the data directory."""
