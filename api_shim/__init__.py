"""HTTP edge of the xSD 4.5 API, the typed client and the ``xsd`` command line.

- ``app`` (with ``routes``, ``ops``, ``body``, ``schemas``, ``openapi``, ``errors``): the
  FastAPI application;
- ``client``: the typed Python client and the webhook verifier;
- ``exceptions``: the package's exception hierarchy and the API's error codes;
- ``cli``: the ``xsd`` command line, the single-machine supervisor and the demo.

The shim uses the scheduler only through its facade, ``scheduler/__init__.py``.
"""
