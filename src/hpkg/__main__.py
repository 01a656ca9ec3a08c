"""`python -m hpkg` runs the CLI."""

from hpkg.cli import main

if __name__ == "__main__":
    main()
