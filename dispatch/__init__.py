"""Getting queued jobs to workers, torch-free: fair turns for free worker slots and the per-project
running quota (``fairness``, asked by the worker's claim), and the reaper that repairs the broker from
the database (``reaper``, a thread in each API process and the ``saddle reaper`` command)."""
