"""The ``deeplab-trt`` command: a thin dispatcher over subcommands that live next to their code."""
