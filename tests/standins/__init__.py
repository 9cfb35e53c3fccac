"""Local stand-ins for the providers notifier talks to (real servers on 127.0.0.1)."""
