"""The root of the ``node`` exception tree.

Every error the hospital application raises on purpose descends from :class:`NodeError`, so a
caller can catch the package's errors with one clause and the CLI maps them to exit codes and
messages in one place (:mod:`node.cli.errors`). An extra base such as ``ValueError`` stays where
a caller relies on it (pydantic turns a ``ValueError`` raised in a validator into a config
problem). The tree, kept in step with the code by ``tests/node/test_errors.py``::

    NodeError
    ├── ConfigError             node.config: a config file is missing, unreadable or invalid
    ├── KeyFileError            node.keys: a key file is unreadable, the wrong size or not 0600
    ├── AuditError              node.audit: the ledger cannot be written or read
    │   └── AuditDetailError    (also ValueError) details refused: they could contain PHI
    ├── VaultError              node.vault: a vault row is missing, foreign or tampered with
    ├── OptionError             node.deid: (also ValueError) unknown or conflicting option
    ├── SrError                 node.sr: the inputs cannot make a valid result SR
    ├── JobError                node.jobs: a job step failed (message safe to store)
    │   └── JobDeferredError    node.pauses: a paused destination/vendor holds the job back
    ├── ValidateUsageError      node.validate: bad command line, config or data set
    ├── ValidateInferenceError  node.validate: preprocessing or encrypted inference failed
    ├── LabelError              node.validate (labels): the labels CSV does not match the data
    ├── StatsError              node.validate (stats): (also ValueError) no such statistic
    ├── MultisiteError          node.multisite: a multi-site round, federation or ledger failed
    │   ├── VectorError         (also ValueError) a contribution vector or sum is malformed
    │   └── RoundRefusedError        the coordinator releases nothing (minimum, refused site)
    └── CommandError            node.cli.errors: a step of a command failed
        └── CommandUsageError   node.cli.errors: bad usage, config or input at that step

The CLI maps two foreign roots as well; their trees are drawn in their own packages::

    ScpError                    scp: DICOM networking and the spool (scp/errors.py)
    InferenceError              secure_infer: encrypted inference (secure_infer/errors.py)
"""

from __future__ import annotations

__all__ = ["NodeError"]


class NodeError(Exception):
    """Base class of every error raised on purpose by the ``node`` package.

    Messages name what is wrong and what to do, and never contain PHI (names, IDs, accession
    numbers, raw UIDs): studies appear only as keyed pseudonyms.
    """
