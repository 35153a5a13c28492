"""Named failures. The library raises these; the CLI prints one line and exits non-zero."""


class IgcliError(Exception):
    """An expected failure a user can fix; ``str(err)`` says how."""

    exit_code = 1


class StoreLocked(IgcliError):
    """Another process holds the DuckDB write lock."""

    exit_code = 3


class StoreError(IgcliError):
    """The store cannot be opened or written."""


class InputError(IgcliError):
    """An input file cannot be used at all (no header, missing required columns, bad encoding)."""


class WeightsMissing(IgcliError):
    """Pretrained weights for a backbone cannot be found offline."""


class FeatureMismatch(IgcliError):
    """Stored features do not match what a model card asks for."""


class ModelError(IgcliError):
    """A model directory is missing, altered or unusable."""


class WeightsMismatch(IgcliError):
    """A weights file (or weights package) whose tensors do not fit the architecture."""


class EngineError(IgcliError):
    """The Ray engine is not installed, cannot reach its cluster, or its job failed (the store is unchanged)."""


class OutputError(InputError):
    """An output path the user named (``--out``, ``--exports``) cannot be written: a missing folder, a folder
    name, no permission. An ``InputError``, as any bad option value is."""
