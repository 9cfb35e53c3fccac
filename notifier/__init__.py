"""notifier: tell every passenger and shipper on a disrupted sailing what happened and what they may choose."""

__version__ = "0.1.0"
