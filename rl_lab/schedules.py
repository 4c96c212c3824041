"""Schedules as pure functions of the step: nothing to checkpoint, identical after a resume."""


def linear_schedule(start: float, end: float, duration: int, step: int) -> float:
    """Goes from `start` to `end` over `duration` steps, then stays at `end`."""
    if duration <= 0:
        return end
    fraction = min(step / duration, 1.0)
    return start + fraction * (end - start)


def crossed(step: int, steps_taken: int, every: int) -> bool:
    """Did the step counter pass a multiple of `every` in the last `steps_taken` steps (N envs step at once)?"""
    return step // every > (step - steps_taken) // every


def multiples(first: int, last: int, every: int) -> range:
    """The multiples of `every` from step `first` to step `last`, both included: what fell due in those steps."""
    return range(-(-first // every) * every, last + 1, every)
