"""One exception family. The CLI prints ``error: <message>`` on one line and exits 2 for any of them."""


class SuiteError(Exception):
    """Base class: a problem the user can fix. The message says what and how."""


class ConfigError(SuiteError):
    """A bad preset, override, method name or compressor setting."""


class DataError(SuiteError):
    """Missing, corrupt or unreadable data."""


class CompressionError(ConfigError):
    """A compressor cannot reach the asked compression factor or cannot apply to a target."""


class TrialDiverged(SuiteError):
    """Training produced a non-finite loss; the run is recorded as failed with this reason."""
