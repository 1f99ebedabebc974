"""HTTP edge of the xSD 4.5 API, the typed client and the ``xsd`` command line."""
