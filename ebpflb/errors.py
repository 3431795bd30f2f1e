"""The one exception type of ebpflb: the CLI prints its message as one line and exits 1."""


class EbpflbError(Exception):
    """Something the user can fix; the message says what is wrong and what to do."""
