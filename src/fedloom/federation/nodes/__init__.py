"""The federation's long-lived processes: the director (state, service, one coroutine per
experiment), envoys, the experiment processes they start, their configs, and what keeps them
single (folder lock) and tied to their parent (lifeline)."""
