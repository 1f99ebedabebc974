"""``python -m api_shim`` runs the ``xsd`` command line."""

from .cli import main

main()
