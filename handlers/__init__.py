"""One function per operationId in openapi.yaml; Connexion resolves them by name."""

from handlers.sessions import delete_session

__all__ = ["delete_session"]
