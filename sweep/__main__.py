"""Entry point of ``python -m sweep``."""

from sweep.app import main

if __name__ == "__main__":
    main()
