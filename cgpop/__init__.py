"""cgpop: a CommuniGate-style multi-account POP3 gateway."""

__version__ = "0.1.0"
