"""Care management: disease pathways as data, personal care plans, alert rules and the engine.

The pure core (``engine``, ``rules``, ``control``, ``measures``, ``expressions``, ``timing``,
``apply``, ``revision``, ``alerts``, ``enrolment``) does no I/O; ``definitions`` reads the
package's data files at startup. See README.md.
"""
