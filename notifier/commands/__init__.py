"""The command line's commands, one module per command group in the order data flows; cli.py assembles them."""
