"""hookrelay's listener side: relay connection, forwarder and the CLI."""

__version__ = "0.1.0"
