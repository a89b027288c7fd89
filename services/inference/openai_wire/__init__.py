"""OpenAI's HTTP wire format, as an upstream speaks it, one module per resource.
Pure: no I/O."""
