"""The updates `on_nonfinite='skip'` throws away: counted, reported, and a run that skips most
of them stopped.

With `on_nonfinite='skip'`, a step whose loss, update or BatchNorm statistics are not finite keeps
the previous state, as dynamic loss scaling skips an overflowing step. A few skipped updates are
harmless; a run that skips most of them learns nothing while its log looks like training.
`SkippedUpdates` counts them from each step's `finite` metric for the log records
(`skipped_updates` per interval), the evaluation lines and the final line, and reports a failure
when more than `MAX_SKIPPED_SHARE` of an epoch's worth of consecutive steps were skipped; the
trainer then stops as `on_nonfinite='stop'` does (`NonFiniteLossError`, exit status 3).
"""

import collections

# A run stops once more than this share of the last `steps_per_epoch` steps were skipped.
MAX_SKIPPED_SHARE = 0.5


class SkippedUpdates:
    """Counts the steps whose update was skipped, per log interval, per evaluation and in all.

    A step is one micro-step of the loop (with gradient accumulation, a micro-batch whose
    gradient was dropped). Skipping keeps the whole train state, its step count included, so a
    checkpoint of loop step s whose state counts t steps stands for s − t skipped ones: a resumed
    run passes them as `skipped_before`, and its total counts the whole run.

    >>> skipped = SkippedUpdates(steps_per_epoch=4)
    >>> [skipped.add(step, finite) for step, finite in [(1, True), (2, False), (3, True)]]
    [None, None, None]
    >>> skipped.take_interval(), skipped.total
    (1, 1)
    >>> skipped.add(4, False), skipped.evaluation_note()  # steps 1 … 4: 2 of 4 skipped
    (None, '; 2 of the 4 updates since the last evaluation were skipped (non-finite)')
    >>> print(skipped.add(5, False))  # doctest: +NORMALIZE_WHITESPACE
    3 of the 4 updates of steps 2 … 5 were skipped (non-finite loss, update or BatchNorm
    statistics; 3 in all)
    """

    def __init__(self, steps_per_epoch: int, skipped_before: int = 0):
        """Args:
        steps_per_epoch: the loop's steps per epoch (micro-steps with accumulation).
        skipped_before: the steps skipped before this process's first `add` (a resumed run's).
        """
        self.steps_per_epoch = steps_per_epoch
        self.total = skipped_before
        self._last_epoch: collections.deque[bool] = collections.deque(maxlen=steps_per_epoch)
        self._in_interval = 0
        self._since_evaluation = [0, 0]  # skipped, steps

    def add(self, step: int, finite: bool) -> str | None:
        """Counts `step`; returns why the run must stop when more than `MAX_SKIPPED_SHARE` of
        the last `steps_per_epoch` steps (the ones this process ran) were skipped, else None."""
        skipped = not finite
        self._last_epoch.append(skipped)
        self.total += skipped
        self._in_interval += skipped
        self._since_evaluation[0] += skipped
        self._since_evaluation[1] += 1
        recent = sum(self._last_epoch)
        if recent <= MAX_SKIPPED_SHARE * self.steps_per_epoch:
            return None
        first = step - len(self._last_epoch) + 1
        return (
            f"{recent} of the {len(self._last_epoch)} updates of steps {first} … {step} were "
            f"skipped (non-finite loss, update or BatchNorm statistics; {self.total} in all)"
        )

    def take_interval(self) -> int:
        """The steps skipped since the previous call (a log record's `skipped_updates`)."""
        count, self._in_interval = self._in_interval, 0
        return count

    def evaluation_note(self) -> str:
        """What an evaluation line adds when steps were skipped since the previous one ('' if
        none); starts the next count."""
        (skipped, steps), self._since_evaluation = self._since_evaluation, [0, 0]
        if not skipped:
            return ""
        return (
            f"; {skipped} of the {steps} updates since the last evaluation were skipped "
            "(non-finite)"
        )
