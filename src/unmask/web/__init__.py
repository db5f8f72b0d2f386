"""`unmask serve`: a web page and an HTTP API around the same checker as `unmask check`."""
