"""agentos-sessions: Agno AgentOS's delete-session contract, hosted from its own spec."""

import warnings

# connexion 3.3 imports starlette.testclient, which on Starlette 1.x warns about httpx in
# every process (each worker too), though serving never uses it: silenced before import.
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
