"""Storage: configured databases, table discovery and the erase transaction."""

from storage.database import Database
from storage.erase import ErasedRows, erase_session
from storage.registry import DatabaseRequired, Storage, Target, TargetError, UnknownDatabase, UnknownTable

__all__ = [
    "Database",
    "DatabaseRequired",
    "ErasedRows",
    "Storage",
    "Target",
    "TargetError",
    "UnknownDatabase",
    "UnknownTable",
    "erase_session",
]
