"""User-facing errors: one line that says what is wrong and what to do."""


class DRDMError(Exception):
    """Bad input or setting. The command line prints ``drdm: error: <message>`` and exits with code 2."""
