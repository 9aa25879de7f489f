"""Entry point of ``python -m sweep``."""

from sweep.app import cli

if __name__ == "__main__":
    cli()
