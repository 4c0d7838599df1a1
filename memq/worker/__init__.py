"""`memq worker`: one per node; claims jobs that fit its free GPUs and slots and runs them.

    config.py      WorkerConfig (the `memq worker` options), default scratch
    loop.py        Worker: the loop - claim, start, heartbeat, record ends, exit
    launch.py      a claim's directories, environment (memq.jobenv) and argv; the supervisor processes
    supervisor.py  `python -m memq.worker.supervisor`: runs a slot's jobs one after the other, kills each
                   one's process group when it ends or its lease is not renewed
    protocol.py    the typed lines the worker and a supervisor exchange
    outcome.py     how an attempt's end is recorded: retry, back-off, final failure, quarantine
    reaper.py      declaring other workers dead
    wakeup.py      the selector the loop sleeps in: supervisors' pipes and signals

This package imports nothing itself: the supervisor starts from it without loading the store.
"""
