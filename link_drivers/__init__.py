"""Link drivers: the interface (``api``), framing, the ARQ core and the drivers."""
