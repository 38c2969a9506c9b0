"""Many runs: tuning (selection), verdicts (statistics), reports, and packed sweeps (which runs
stack and how a pack trains). Built on :mod:`precond.run`."""
