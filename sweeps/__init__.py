"""Sweeps: Optuna's samplers and pruners driving ordinary jobs, with every bit of state in Postgres.

Torch-free. The modules, each with one job:
    ``spec``       the request (``SweepSpec``), trial states and limits; the API validates with it
    ``study``      the Optuna bridge: a study rebuilt from the trial rows, asked, dropped
    ``scheduler``  launching trials, recording the ended ones, closing the sweep (API and worker)
    ``runtime``    worker processes only: admission at the claim, the stepper thread, pruning watchers
    ``findings``   cross-run findings written when the sweep closes

State
    A sweep is a ``sweeps`` row (its validated request in ``config``) and one ``sweep_trials`` row per
    trial: the sampled parameters, its state (queued, deferred, running, pruning, complete, pruned,
    failed, cancelled), the objective, the intermediate values reported at epoch boundaries and the
    sampler's per-trial memory (``system_attrs``: GridSampler's grid id, successive halving's
    rungs). The trial's job is an ordinary ``jobs`` row (``kind = "trial"``, ``sweep_id`` set).
    No Optuna storage is kept: each scheduling step rebuilds an in-memory study from the trial rows
    (``optuna.trial.create_trial`` + ``Study.add_trials``), asks it, writes the answer as rows and
    drops it. Nothing lives in a process, so an API or worker restart loses nothing, and Optuna's
    own tables never enter our schema.

Scheduling
    ``scheduler.schedule`` is the one step. It locks the sweep row (SELECT ... FOR UPDATE, so two
    steps cannot both fill the same free slot), records each trial whose job has ended (the job's
    status is the truth; the objective is read from the job's metrics), launches trials until
    ``max_concurrency + lookahead(...)`` are pending or ``max_trials`` have been launched, and
    once nothing is pending and nothing is left to launch it closes the sweep: best trial, then the cross-run findings. The step is idempotent and runs when the sweep is created
    (API), after every trial's ``run_job`` (``on_job_finished``, the worker's hook), and from
    ``GET /v1/sweeps/{id}`` when a running sweep has no running job, which heals a hook lost to a
    worker killed between a job's end and its step.

    Trials are launched *ahead*: ``lookahead(max_concurrency)`` more are queued than may run, so a
    worker that ends a trial finds the next one waiting in the broker and never waits for the
    scheduler. The worker's hook therefore only hands the step to a per-process thread
    (``runtime._Stepper``) and returns. There the common step (``scheduler.record``) writes the
    ended trials' outcomes without the sweep's lock, through the same statement as ``schedule``;
    only when the queue is half empty, a deferred trial can run, or nothing is left does it take
    the lock for ``schedule``, which launches a batch.

Admission (max_concurrency)
    A launched trial is ``queued``; it becomes ``running`` only through ``admit_trial``, which the
    worker's claim calls in its own transaction before the job counts as started. Under a per-sweep
    lock (Postgres advisory lock; SQLite's single writer) it counts the admitted trials whose job has
    not ended; below ``max_concurrency`` the trial is admitted, else it is ``deferred``, the delivery
    is skipped, and a later step (a slot freed) sends it again. So queued trials never count as
    running, and no more than ``max_concurrency`` trials of a sweep ever run at once, however many
    workers there are.

Pruning
    Optuna's pruners judge intermediate values reported at epoch boundaries. The trial's objective
    metric is written once per epoch by the training worker, so the worker process that trains a
    trial also runs a ``PruneWatcher`` thread (started by ``admit_trial`` once the trial is
    admitted, stopped by the hook or ``task_postrun``). When new epochs appear in the series it
    rebuilds the study, gives the pruner this trial with all its epoch values, stores what the
    pruner remembers, and when told to prune marks the trial ``pruning`` and sets the job's
    ``cancel_requested`` — exactly what ``POST /v1/jobs/{id}/cancel`` does; the job's heartbeat
    stops training at its next beat and the hook records the trial as ``pruned``. The watcher runs
    beside the training loop in the trial's own process, so it never waits for a free worker slot,
    and it writes only its own trial's row.
"""
