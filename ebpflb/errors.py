"""The exception types of ebpflb: the CLI prints their message as one line and exits 1."""


class EbpflbError(Exception):
    """Something the user can fix; the message says what is wrong and what to do."""


class IncompatiblePins(EbpflbError):
    """The pins were made by another version of ebpflb: their layout cannot be read."""
