"""Channels: the only code that talks to providers, each given a message and its own provider config."""
