"""Errors an engine raises for input the client got wrong (the gateway answers them with HTTP 400)."""


class InvalidInput(ValueError):
    """The request asks for something this model cannot do, e.g. more dimensions than it has."""
