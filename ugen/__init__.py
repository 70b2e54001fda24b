"""ugen: one decoder-only transformer that reads and writes text and discrete image tokens."""

__version__ = "0.1.0"
