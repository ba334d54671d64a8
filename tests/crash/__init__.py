"""Crash tests with the database as the truth: see ``__main__`` (``python -m crash``)."""


def version_of(title: str) -> int:
    """The version a todo's title carries (``"w2-17 v12"`` is 12): every change the writers commit
    writes a higher one (see :mod:`crash.writers`)."""
    return int(title.rsplit(" v", 1)[1])
