"""agentos-sessions: Agno AgentOS's delete-session contract, hosted from its own spec."""

import warnings

# connexion 3.3 imports starlette.testclient at import time, which on Starlette 1.x warns
# about httpx in every process that loads connexion (each uvicorn worker included); the
# test client is never used when serving. Set here, before any module imports connexion.
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
