"""The project's own error types: what a user gave (a profile, a dataset, a runs file, a device, a cluster
address) that the study cannot use, said in one line that names it.

The command line (:mod:`study.__main__`) prints these as ``error: <message>`` and exits with 2; every other
exception is a bug and keeps its traceback. Each type is also the built-in one callers caught before (a
:class:`StudyError` is a ``ValueError``, :class:`MissingInput` a ``FileNotFoundError``, :class:`ClusterUnreachable`
a ``ConnectionError``), so ``except ValueError`` and the tests' ``pytest.raises(ValueError)`` still hold.
"""
from __future__ import annotations


class StudyError(ValueError):
    """An input the study cannot use; the message is one line naming what is wrong and where."""


class MissingInput(StudyError, FileNotFoundError):
    """A file or folder the user named that is not there (a runs.csv, a profile, a results folder to reuse)."""


class ClusterUnreachable(StudyError, ConnectionError):
    """The Ray cluster at the given address cannot be joined."""
