"""The `dkit` command line (the top layer): `dkit.cli.main:main` is the console script."""
