"""Storage: configured databases, table discovery and the erase transaction. It knows
nothing of HTTP or of the app, which builds ``DatabaseSettings`` and calls ``Storage``."""

from storage.audit import AuditEntry
from storage.config import DatabaseSettings, SessionTable
from storage.database import CannotWrite, Database, UnsafeDatabaseFile
from storage.erase import ErasedRows, erase_session
from storage.registry import DatabaseRequired, Storage, Target, TargetError, UnknownDatabase, UnknownTable

__all__ = ["AuditEntry", "CannotWrite", "Database", "DatabaseRequired", "DatabaseSettings", "ErasedRows",
           "SessionTable", "Storage", "Target", "TargetError", "UnknownDatabase", "UnknownTable", "UnsafeDatabaseFile",
           "erase_session"]  # fmt: skip
