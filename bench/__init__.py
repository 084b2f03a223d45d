"""The benchmark for DELETE /sessions/{session_id}; run with ``python -m bench``."""
