"""The `sealstore` command (placeholder: filled in by the launcher work)."""
import sys


def main(argv=None):
    print("sealstore: not yet", file=sys.stderr)
    return 2
