"""The command groups of the `notifier` command line, one module per group; cli.py registers them."""
