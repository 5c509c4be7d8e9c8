"""Pure domain: job spec, quantities, priorities, job states, event names, placement.

Nothing here does I/O, reads the clock or the environment; callers pass `now` in.
"""
