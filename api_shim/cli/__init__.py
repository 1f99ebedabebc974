"""The ``xsd`` command line and what only it runs.

- ``main``: the commands (the ``xsd`` console script and ``python -m api_shim``);
- ``supervisor``: ``xsd up``, every process of a single-machine install;
- ``demo``: ``xsd demo``, the spec's quick example through every process;
- ``generate``: ``xsd generate``, a client that submits, shows progress and saves images.
"""

from .main import main

__all__ = ["main"]
