"""`batchgate run`: the command and its terminal display (the engine is tasks/local_run.py)."""
