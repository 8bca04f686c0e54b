"""florete-agent: the node agent of a Florete edge cluster."""

__version__ = "0.1.0"
